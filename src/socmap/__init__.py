"""socmap: soil organic carbon maps of Bavaria with a CNN-LSTM, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
