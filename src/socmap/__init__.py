"""socmap: soil organic carbon maps of Bavaria with a CNN-LSTM, as a reproducible DVC pipeline.

"The original", wherever socmap's code and docs say so, is the research code that socmap re-builds:
the CNN-LSTM (`RefittedCovLSTM`) of the SOCmapping project (GitHub ValerianFourel/SOCmapping, folder
CNNLSTM/). socmap keeps its model, data layout and training scheme, and not its defects.
"""

__version__ = "0.1.0"
