"""The run ensemble as one batched model: every member and every test-time view in one forward pass.

The members share one architecture (`socmap.models`, one `ModelSpec`) and differ in their weights,
their feature normalisation and their target transform. `StackedEnsemble` stacks the weights along a
leading member axis and runs the architecture once per batch: the views of the spec (the largest of
train.augment's symmetry groups within train.tta views) and the members' normalisations are applied
to the input, the convolutions run grouped by member, the dense layers as batched matrix products,
the LSTM once per member over all its views (``skip_cov_lstm`` joins each year's normalised centre pixel
and window mean to the CNN features it feeds). The attention model (``attention``) runs member by member on
the normalised views, its transformer layers as they are. The values are each member's own forward's
(`Predictor.predict_tensor`) up to float rounding.

What makes it cheaper than 20 small forward passes (5 members × 4 views), besides the fewer calls:

- each convolution computes only the outputs its 2×2 max-pooling reads (a 5-pixel window pools 4 of
  its 5 rows), and pools before the ReLU (the two commute, and the ReLU then sees a quarter of the
  values);
- a convolution whose input has no more pixels than its kernel has taps (the second one, on 2×2
  pixels, of a 5-pixel window) runs as the dense matrix it is: most of its taps fall on the zero
  padding, which the matrix leaves out;
- the input goes through in chunks of pixels small enough for the activations to stay in cache, on
  as many threads as torch would use, each chunk's ops on one thread (on a GPU: larger chunks, one
  after the other);
- the centre-pixel LSTM (``lstm``) sees the same input in every view of an odd window, so it runs once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from socmap.errors import SocmapError
from socmap.models import CentrePixelLSTM, RefittedCovLSTM, SkipCovLSTM, SurveyYearCNN, YearAttention
from socmap.predict import Predictor
from socmap.transforms import dihedral, symmetric_mean

FRAMES_PER_CHUNK = 4096  # frames (members × views × pixels × years) per chunk: the activations stay in cache
GPU_CHUNKS = 64  # a GPU takes chunks this many times larger
TAPS = 9  # a 3×3 kernel


class StackedDense:
    """The same `nn.Sequential` of Linear and ReLU layers of every member: [M, N, in] -> [M, N, out]."""

    def __init__(self, stacks: Sequence[nn.Sequential], rows_order: torch.Tensor | None = None):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = []  # (weight [M, in, out], bias), or ReLU
        for position, layers in enumerate(zip(*stacks)):
            if isinstance(layers[0], nn.ReLU):
                self.layers.append(None)
                continue
            weight = torch.stack([layer.weight.detach().t() for layer in layers])  # [M, in, out]
            if position == 0 and rows_order is not None:
                weight = weight[:, rows_order]  # the input's features in the order the caller lays them out
            self.layers.append((weight.contiguous(), torch.stack([layer.bias.detach() for layer in layers])[:, None]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(x) if layer is None else torch.baddbmm(layer[1], x, layer[0])
        return x


class StackedConvPool:
    """The 3×3 convolution (padding 1), ReLU and 2×2 max-pooling of every member, member-major and
    channels-last: [M, N, h, w, C_in] (any strides) -> [M, N, h // 2, w // 2, C_out]."""

    def __init__(self, convs: Sequence[nn.Conv2d], height: int, width: int):
        weight = torch.stack([conv.weight.detach() for conv in convs])  # [M, C_out, C_in, 3, 3]
        self.bias = torch.stack([conv.bias.detach() for conv in convs])  # [M, C_out]
        self.dense = height * width <= TAPS
        if self.dense:
            self.matrix = conv_matrix(weight, height, width)  # [M, h·w·C_in, 2h'·2w'·C_out]
        else:
            self.weight = weight.flatten(0, 1)  # [M·C_out, C_in, 3, 3], grouped by member

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, n, h, w, _ = x.shape
        pooled_h, pooled_w = h // 2, w // 2
        if self.dense:
            y = torch.bmm(x.reshape(m, n, -1), self.matrix).view(m, n, pooled_h, 2, pooled_w, 2, -1)
            y = torch.maximum(torch.maximum(y[:, :, :, 0, :, 0], y[:, :, :, 0, :, 1]),
                              torch.maximum(y[:, :, :, 1, :, 0], y[:, :, :, 1, :, 1]))  # [M, N, h', w', C_out]
            return torch.relu_(y.add_(self.bias[:, None, None, None]))
        # pixel-major, the members side by side as channel groups; the top and left edge padded (and
        # an even window's far edge): the far row and column an odd window's pooling drops are never
        # computed
        x = F.pad(x.permute(1, 2, 3, 0, 4), (0, 0, 0, 0, 1, 2 * pooled_w + 1 - w, 1, 2 * pooled_h + 1 - h))
        y = F.conv2d(x.flatten(3).permute(0, 3, 1, 2), self.weight, groups=m)  # [N, M·C_out, 2h', 2w']
        y = F.max_pool2d(y, 2).permute(0, 2, 3, 1).unflatten(3, (m, -1))  # [N, h', w', M, C_out], a view
        return torch.relu_(y + self.bias).permute(3, 0, 1, 2, 4)


def conv_matrix(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A 3×3 convolution with zero padding 1 on an h×w input as a matrix from the input (h, w, C_in
    order) to the outputs its 2×2 pooling reads (h', w', C_out order): [M, h·w·C_in, 2h'·2w'·C_out]."""
    members, c_out, c_in = weight.shape[:3]
    out_h, out_w = 2 * (height // 2), 2 * (width // 2)
    matrix = weight.new_zeros(members, height, width, c_in, out_h, out_w, c_out)
    for row in range(out_h):
        for col in range(out_w):
            for dy in range(3):
                for dx in range(3):
                    source_row, source_col = row + dy - 1, col + dx - 1
                    if 0 <= source_row < height and 0 <= source_col < width:
                        matrix[:, source_row, source_col, :, row, col, :] = weight[:, :, :, dy, dx].transpose(1, 2)
    return matrix.reshape(members, height * width * c_in, out_h * out_w * c_out)


class StackedCNN:
    """`models.PatchCNN` of every member: frames [M, N, w, w, C] -> features [M, N, 128]."""

    def __init__(self, cnns: Sequence[nn.Module], window_size: int):
        pooled = window_size // 2
        self.conv1 = StackedConvPool([cnn.conv1[0] for cnn in cnns], window_size, window_size)
        self.conv2 = StackedConvPool([cnn.conv2[0] for cnn in cnns], pooled, pooled)
        c_out, h, w = cnns[0].conv2[0].out_channels, pooled // 2, pooled // 2
        # PatchCNN flattens (C, h, w); the stacked layers hand over (h, w, C)
        order = torch.arange(c_out * h * w).reshape(c_out, h, w).permute(1, 2, 0).flatten()
        self.fc = StackedDense([cnn.fc_cnn for cnn in cnns], order)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(frames)).flatten(2))


class StackedEnsemble:
    """Members of one architecture as one model: raw patches [B, C, W, W, T] -> each member's g/kg [M, B]."""

    def __init__(self, members: Sequence[Predictor]):
        spec = members[0].spec
        for member in members[1:]:
            if member.spec != spec:
                raise SocmapError(f"{member.source}: trained as {member.spec}, but {members[0].source} as {spec}; "
                                  "the members of an ensemble must come from one `socmap train`: rerun it")
        self.spec, self.device, self.sources = spec, members[0].device, [m.source for m in members]
        nets = [member.model for member in members]
        self.kind = type(nets[0])
        # the centre pixel of an odd window stays put under every symmetry: one view is all of them
        self.views = (0,) if self.kind is CentrePixelLSTM else spec.views
        self.mean = torch.stack([m.features.mean for m in members]).to(self.device)  # [M, C, T]
        self.std = torch.stack([m.features.std for m in members]).to(self.device)
        self.targets = [member.target for member in members]
        if self.kind is YearAttention:  # the transformer's layers as they are, one member after the other
            self.nets = nets
            return
        if self.kind is not CentrePixelLSTM:
            self.cnn = StackedCNN([net.cnn for net in nets], spec.window_size)
        if self.kind is not SurveyYearCNN:
            self.lstms = [net.lstm for net in nets]  # torch's fused LSTM: faster than any batched rewrite of it
        if self.kind in (RefittedCovLSTM, SkipCovLSTM):
            self.fc_lstm = StackedDense([net.fc_lstm for net in nets])
        self.head = StackedDense([net.head for net in nets])

    def __len__(self) -> int:
        return len(self.targets)

    @torch.inference_mode()
    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Raw patches [B, C, W, W, T] (any device) to each member's SOC in g/kg [M, B] on the device."""
        if tuple(x.shape[1:]) != self.spec.input_shape:
            raise SocmapError(f"{self.sources[0]}: patches of shape {tuple(x.shape[1:])} (bands, window, window, "
                              f"years) given, the model was trained on {self.spec.input_shape} "
                              f"({', '.join(self.spec.band_names)})")
        x = x.to(self.device, dtype=torch.float32)
        frames = FRAMES_PER_CHUNK * (1 if self.device.type == "cpu" else GPU_CHUNKS)
        chunk = max(1, frames // (len(self) * len(self.views) * self.spec.time_before))
        starts = range(0, len(x), chunk)
        workers = min(torch.get_num_threads(), len(starts)) if self.device.type == "cpu" else 1
        if workers > 1:
            # the chunks side by side, each op on one thread: ops this small gain little from sharing out
            # their work, and on busy cores a shared op waits for its slowest thread
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                parts = list(pool.map(lambda start: self.transformed(x[start:start + chunk]), starts))
        else:
            parts = [self.transformed(x[start:start + chunk]) for start in starts]
        z = torch.cat(parts, dim=1)
        return torch.stack([target.inverse(values) for target, values in zip(self.targets, z)])

    def predict(self, patches: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Raw patches [N, C, W, W, T] (an array or a memmap, read one batch at a time) to g/kg float64 [M, N]."""
        out = np.empty((len(self), len(patches)), dtype=np.float64)
        for start in range(0, len(patches), batch_size):
            batch = torch.from_numpy(np.array(patches[start:start + batch_size], dtype=np.float32))
            out[:, start:start + len(batch)] = self.predict_tensor(batch).double().cpu().numpy()
        return out

    @torch.inference_mode()  # per thread: the chunks' threads too
    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output in its transformed target space [M, B], the mean over the views."""
        m, b = len(self), len(x)
        if self.kind is YearAttention:
            normalised = (x[None] - self.mean[:, None, :, None, None]) / self.std[:, None, :, None, None]
            return torch.stack([symmetric_mean(net, z, self.views) for net, z in zip(self.nets, normalised)])
        if self.kind is CentrePixelLSTM:
            centre = x.shape[2] // 2
            series = (x[None, :, :, centre, centre, :] - self.mean[:, None]) / self.std[:, None]  # [M, B, C, T]
            last = self.last_outputs(series.transpose(2, 3))  # [M, B, hidden]
            return self.head(last).reshape(m, b)
        views = torch.cat([dihedral(x, k) for k in self.views])  # [V·B, C, w, w, T]; the norms are per pixel
        if self.kind is SurveyYearCNN:
            z = self.head(self.cnn(self.frames(views[..., -1:], slice(-1, None))))  # [M, V·B, 1]
        else:
            n, t = views.shape[0], views.shape[-1]
            frames = self.frames(views)  # [M, V·B·T, w, w, C]
            features = self.cnn(frames).reshape(m, n, t, -1)  # [M, V·B, T, 128]
            if self.kind is SkipCovLSTM:  # each year's centre pixel and window mean join its CNN features
                centre = frames.shape[2] // 2
                covariates = torch.cat([frames[:, :, centre, centre], frames.mean(dim=(2, 3))], dim=2)
                features = torch.cat([features, covariates.reshape(m, n, t, -1)], dim=3)  # [M, V·B, T, 128 + 2C]
            recent = self.fc_lstm(self.last_outputs(features))  # [M, V·B, 64]
            z = self.head(torch.cat([recent, features[:, :, -1]], dim=2))  # [M, V·B, 1]
        return z.reshape(m, len(self.views), b).mean(dim=1)

    def frames(self, x: torch.Tensor, years: slice = slice(None)) -> torch.Tensor:
        """Raw patches [N, C, w, w, T] -> every member's normalised frames [M, N·T, w, w, C], a view of
        them laid out pixel-major (the layout the grouped convolution takes); `years`: the normalisation's."""
        n, c, h, w, t = x.shape
        mean, std = self.mean[..., years].permute(2, 0, 1), self.std[..., years].permute(2, 0, 1)  # [T, M, C]
        pixels = x.permute(0, 4, 2, 3, 1).reshape(n, t, h * w, 1, c)  # few dimensions: a fast broadcast
        z = torch.sub(pixels, mean[:, None], out=x.new_empty(n, t, h * w, len(self), c)).div_(std[:, None])
        return z.view(n * t, h, w, len(self), c).permute(3, 0, 1, 2, 4)

    def last_outputs(self, sequences: torch.Tensor) -> torch.Tensor:
        """Each member's LSTM over its sequences [M, N, T, F]: the last step's output [M, N, hidden]."""
        return torch.stack([lstm(seq)[0][:, -1] for lstm, seq in zip(self.lstms, sequences)])
