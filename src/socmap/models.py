"""The CNN-LSTM of the original (`RefittedCovLSTM`), two ablations that drop one of its parts, and the
original's later temporal model.

Every model takes patches ``[B, C, H, W, T]`` (channels as `socmap.patches.channel_names` gives them,
time chronological, the last step the survey year), already normalised, and returns one value per
row ``[B]`` in the transformed target space.

- ``refitted_cov_lstm``: a small CNN on every year's patch, an LSTM over the
  years, and a head that joins the LSTM's last output with the CNN features of
  the survey year.
- ``cnn``: the same CNN on the survey year only (no time series).
- ``lstm``: the same LSTM on the centre pixel's time series only (no neighbourhood).
- ``attention``: the same CNN on every year's patch, self-attention over the years.
- ``skip_cov_lstm``: ``refitted_cov_lstm`` with each year's centre pixel and window mean of every band
  passed around the CNN into the LSTM and the head (the covariates the feature forest sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from socmap.config import TrainConfig, choices
from socmap.errors import SocmapError
from socmap.transforms import GROUPS

MODELS = choices(TrainConfig, "model")
CNN_FEATURES = 128
ATTENTION_HEADS = 4
MAX_YEARS = 50  # the longest sample.time_before (its range in socmap.config)


class PatchCNN(nn.Module):
    """Two 3×3 convolutions with 2×2 max-pooling and a dense layer: one patch to 128 features.

    The convolutions run channels-last (pixels × bands in memory), which CPU kernels take about twice
    as fast for these small windows; the values are those of the usual layout.
    """

    def __init__(self, bands: int, window_size: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(bands, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.fc_cnn = nn.Sequential(nn.Linear(64 * (window_size // 4) ** 2, CNN_FEATURES), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))  # [N, 32, w//2, w//2]
        x = self.conv2(x)  # [N, 64, w//4, w//4]
        return self.fc_cnn(x.flatten(1))  # [N, 128]


class RefittedCovLSTM(nn.Module):
    """The original CNN-LSTM, fed in chronological order."""

    SKIPPED = 0  # values per band and year that reach the LSTM and the head around the CNN

    def __init__(self, bands: int, window_size: int, hidden_size: int = 128, num_layers: int = 2,
                 dropout: float = 0.25):
        super().__init__()
        joined = CNN_FEATURES + self.SKIPPED * bands
        self.cnn = PatchCNN(bands, window_size)
        self.lstm = nn.LSTM(joined, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.fc_lstm = nn.Sequential(nn.Linear(hidden_size, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64 + joined, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w, t = x.shape
        frames = x.permute(0, 4, 2, 3, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)  # [B*T, C, H, W], one copy
        years = self.join(frames, self.cnn(frames).reshape(b, t, CNN_FEATURES))  # [B, T, 128 + skipped]
        sequence, _ = self.lstm(years)  # [B, T, hidden]
        recent = self.fc_lstm(sequence[:, -1])  # [B, 64]
        return self.head(torch.cat([recent, years[:, -1]], dim=1)).squeeze(1)  # [B]

    def join(self, frames: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Each year's input to the LSTM (the survey year's also to the head), from the years' frames
        [B*T, C, H, W] and CNN features [B, T, 128]: the features."""
        return features


class SurveyYearCNN(nn.Module):
    """Ablation without the LSTM: the CNN on the survey year's patch only."""

    def __init__(self, bands: int, window_size: int):
        super().__init__()
        self.cnn = PatchCNN(bands, window_size)
        self.head = nn.Sequential(nn.Linear(CNN_FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.cnn(x[..., -1])  # [B, C, H, W] -> [B, 128]
        return self.head(features).squeeze(1)  # [B]


class CentrePixelLSTM(nn.Module):
    """Ablation without the convolution: the LSTM on the centre pixel's time series only."""

    def __init__(self, bands: int, hidden_size: int = 128, num_layers: int = 2, dropout: float = 0.25):
        super().__init__()
        self.lstm = nn.LSTM(bands, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(hidden_size, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                  nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x.shape[2] // 2
        series = x[:, :, centre, centre, :].transpose(1, 2)  # [B, T, C]
        sequence, _ = self.lstm(series)  # [B, T, hidden]
        return self.head(sequence[:, -1]).squeeze(1)  # [B]


class YearAttention(nn.Module):
    """The CNN on every year's patch and self-attention over the years (a transformer encoder, as in the
    original's later temporal model), its survey-year output joined with the survey year's CNN features."""

    def __init__(self, bands: int, window_size: int, hidden_size: int = 64, num_layers: int = 2,
                 dropout: float = 0.25):
        super().__init__()
        self.cnn = PatchCNN(bands, window_size)
        self.project = nn.Linear(CNN_FEATURES, hidden_size)
        self.position = nn.Parameter(torch.zeros(1, MAX_YEARS, hidden_size))  # learnt, counted back from the survey year
        layer = nn.TransformerEncoderLayer(hidden_size, ATTENTION_HEADS, 2 * hidden_size, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(hidden_size + CNN_FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w, t = x.shape
        frames = x.permute(0, 4, 2, 3, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)  # [B*T, C, H, W]
        features = self.cnn(frames).reshape(b, t, CNN_FEATURES)  # [B, T, 128]
        sequence = self.encoder(self.project(features) + self.position[:, MAX_YEARS - t:])  # [B, T, hidden]
        return self.head(torch.cat([sequence[:, -1], features[:, -1]], dim=1)).squeeze(1)  # [B]


class SkipCovLSTM(RefittedCovLSTM):
    """The CNN-LSTM with each year's centre pixel and window mean of every band joined to that year's CNN
    features, at the LSTM's input and at the head: the values the feature forest splits on reach the
    recurrent part unpooled."""

    SKIPPED = 2  # the centre pixel and the window mean

    def join(self, frames: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Each year's CNN features, centre pixel and window mean [B, T, 128 + 2C]. They are taken from
        the frames, a contiguous copy: an augmented batch is a flipped or turned view of the patches,
        slow to average over."""
        h, w = frames.shape[2:]
        covariates = torch.cat([frames[:, :, h // 2, w // 2], frames.mean(dim=(2, 3))], dim=1)  # [B*T, 2C]
        return torch.cat([features, covariates.reshape(*features.shape[:2], -1)], dim=2)


def build_model(name: str, bands: int, window_size: int, hidden_size: int = 128, num_layers: int = 2,
                dropout: float = 0.25) -> nn.Module:
    """The model called `name` (train.model) for patches of `bands` × `window_size`² pixels."""
    if name not in MODELS:
        raise SocmapError(f"train.model = {name!r}: must be one of {', '.join(MODELS)}")
    if name != "lstm" and window_size < 4:
        raise SocmapError(f"sample.window_size = {window_size}: train.model = {name} pools the patch twice "
                          "by 2, so it needs a window of at least 5 pixels (or use train.model = lstm)")
    if name == "refitted_cov_lstm":
        return RefittedCovLSTM(bands, window_size, hidden_size, num_layers, dropout)
    if name == "skip_cov_lstm":
        return SkipCovLSTM(bands, window_size, hidden_size, num_layers, dropout)
    if name == "cnn":
        return SurveyYearCNN(bands, window_size)
    if name == "attention":
        if hidden_size % ATTENTION_HEADS:
            raise SocmapError(f"train.hidden_size = {hidden_size}: train.model = attention splits it into "
                              f"{ATTENTION_HEADS} heads, so it must be a multiple of {ATTENTION_HEADS}")
        return YearAttention(bands, window_size, hidden_size, num_layers, dropout)
    return CentrePixelLSTM(bands, hidden_size, num_layers, dropout)


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its model and check its input: the architecture and its
    sizes, the bands by name, the years per patch and the window symmetries a prediction averages over
    (those of `views`)."""

    name: str
    bands: int
    window_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    band_names: tuple[str, ...]
    time_before: int
    views: tuple[int, ...]

    @classmethod
    def from_params(cls, train_cfg: Any, bands: list[str], window_size: int, time_before: int) -> "ModelSpec":
        """The spec of train.* for patches of `bands` × `window_size`² pixels × `time_before` years."""
        return cls(train_cfg.model, len(bands), window_size, train_cfg.hidden_size, train_cfg.num_layers,
                   train_cfg.dropout, tuple(bands), time_before, views(train_cfg))

    def build(self) -> nn.Module:
        """A freshly initialised model of this spec (the current torch seed draws its weights)."""
        return build_model(self.name, self.bands, self.window_size, self.hidden_size, self.num_layers,
                           self.dropout)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(bands, window, window, years) of one patch."""
        return self.bands, self.window_size, self.window_size, self.time_before

    def to_dict(self) -> dict:
        """Plain values, for a checkpoint (``weights_only`` loads no classes)."""
        return {"name": self.name, "bands": self.bands, "window_size": self.window_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "dropout": self.dropout,
                "band_names": list(self.band_names), "time_before": self.time_before, "views": list(self.views)}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        return cls(str(values["name"]), int(values["bands"]), int(values["window_size"]),
                   int(values["hidden_size"]), int(values["num_layers"]), float(values["dropout"]),
                   tuple(values["band_names"]), int(values["time_before"]), tuple(int(v) for v in values["views"]))


def views(train_cfg: TrainConfig) -> tuple[int, ...]:
    """The window symmetries a prediction averages over: the largest symmetry group inside train.augment's
    with at most train.tta views (dihedral training at tta 4: the four quarter turns)."""
    trained = set(GROUPS[train_cfg.augment])
    inside = [group for group in GROUPS.values() if set(group) <= trained and len(group) <= train_cfg.tta]
    return max(inside, key=len)
