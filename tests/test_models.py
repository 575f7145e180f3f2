"""The CNN-LSTM and its ablations: shapes, size, what each one looks at, and safe checkpoints."""

from __future__ import annotations

import pytest
import torch

from socmap.config import TrainConfig
from socmap.errors import SocmapError
from socmap.models import CentrePixelLSTM, RefittedCovLSTM, SkipCovLSTM, SurveyYearCNN, build_model, views


@pytest.fixture
def patches():
    return torch.randn(4, 6, 5, 5, 5, generator=torch.Generator().manual_seed(0))  # [B, C, H, W, T]


@pytest.mark.parametrize("name, cls", [("refitted_cov_lstm", RefittedCovLSTM), ("cnn", SurveyYearCNN),
                                       ("lstm", CentrePixelLSTM), ("skip_cov_lstm", SkipCovLSTM)])
def test_models_map_a_batch_of_patches_to_one_value_each(patches, name, cls):
    model = build_model(name, bands=6, window_size=5).eval()
    assert isinstance(model, cls)
    out = model(patches)
    assert out.shape == (4,) and out.unique().numel() == 4  # one value per patch, each its own
    torch.testing.assert_close(model(patches[1:3]), out[1:3])  # a row's value does not depend on the others


def test_refitted_cov_lstm_is_the_original_size():
    model = build_model("refitted_cov_lstm", bands=6, window_size=5, hidden_size=128, num_layers=2)
    assert sum(p.numel() for p in model.parameters()) == 307_233  # "about 0.3 M parameters at window 5"
    assert model.lstm.num_layers == 2 and model.lstm.dropout == 0.25
    assert model.head[0].in_features == 64 + 128
    wider = build_model("refitted_cov_lstm", bands=6, window_size=9)
    assert wider.cnn.fc_cnn[0].in_features == 64 * 2 * 2


def test_skip_cov_lstm_reads_the_centre_pixel_and_window_mean_past_the_cnn(patches):
    """Its LSTM and head see each year's 6 centre pixels and 6 window means beside the 128 CNN features."""
    model = build_model("skip_cov_lstm", bands=6, window_size=5).eval()
    assert model.lstm.input_size == 128 + 2 * 6 and model.head[0].in_features == 64 + 128 + 2 * 6
    covariates = torch.cat([patches[:, :, 2, 2], patches.mean(dim=(2, 3))], dim=1).transpose(1, 2)
    with torch.no_grad():
        features = model.cnn(patches.permute(0, 4, 1, 2, 3).flatten(0, 1)).reshape(4, 5, 128)
        joined = torch.cat([features, covariates], dim=2)
        expected = model.head(torch.cat([model.fc_lstm(model.lstm(joined)[0][:, -1]), joined[:, -1]], 1)).squeeze(1)
        torch.testing.assert_close(model(patches), expected)


def responds(model: torch.nn.Module, patches: torch.Tensor, edit) -> bool:
    """Whether the model's output moves when `edit` changes (in place) a copy of the patches."""
    changed = patches.clone()
    edit(changed)
    with torch.no_grad():
        return not torch.allclose(model(changed), model(patches))


def test_cnn_lstm_reads_every_year_in_order(patches):
    model = build_model("refitted_cov_lstm", bands=6, window_size=5).eval()
    assert responds(model, patches, lambda x: x[..., 0].add_(1.0))  # the oldest year
    assert responds(model, patches, lambda x: x.copy_(x.flip(-1)))  # order matters: a sequence, not a set


def test_cnn_lstm_equals_its_layers_applied_frame_by_frame(patches):
    """The channels-last fast path computes what the layers say, row by row and year by year."""
    model = build_model("refitted_cov_lstm", bands=6, window_size=5).eval()
    with torch.no_grad():
        rows = []
        for row in patches:  # [C, H, W, T]
            frames = [row[..., t].unsqueeze(0).contiguous() for t in range(row.shape[-1])]  # plain NCHW
            features = []
            for frame in frames:
                x = torch.max_pool2d(torch.relu(torch.conv2d(frame, model.cnn.conv1[0].weight,
                                                             model.cnn.conv1[0].bias, padding=1)), 2)
                x = torch.max_pool2d(torch.relu(torch.conv2d(x, model.cnn.conv2[0].weight,
                                                             model.cnn.conv2[0].bias, padding=1)), 2)
                features.append(model.cnn.fc_cnn(x.flatten(1)))
            sequence, _ = model.lstm(torch.stack(features, dim=1))
            joined = torch.cat([model.fc_lstm(sequence[:, -1]), features[-1]], dim=1)
            rows.append(model.head(joined).squeeze(1))
        torch.testing.assert_close(model(patches), torch.cat(rows), rtol=1e-5, atol=1e-6)


def test_cnn_ablation_sees_only_the_survey_year(patches):
    model = build_model("cnn", bands=6, window_size=5).eval()
    assert not responds(model, patches, lambda x: x[..., :-1].zero_())
    assert responds(model, patches, lambda x: x[..., -1].add_(1.0))


def test_lstm_ablation_sees_only_the_centre_pixel(patches):
    model = build_model("lstm", bands=6, window_size=5).eval()
    assert not responds(model, patches, lambda x: (x[:, :, 0].fill_(9.0), x[:, :, :, 4].fill_(-9.0)))
    assert responds(model, patches, lambda x: x[:, :, 2, 2, 0].add_(1.0))


def test_bad_model_settings_are_params_errors():
    with pytest.raises(SocmapError, match="train.model = 'transformer'.*refitted_cov_lstm, cnn, lstm"):
        build_model("transformer", bands=6, window_size=5)
    with pytest.raises(SocmapError, match="sample.window_size = 3.*at least 5"):
        build_model("cnn", bands=6, window_size=3)
    assert build_model("lstm", bands=6, window_size=1)(torch.zeros(2, 6, 1, 1, 4)).shape == (2,)


@pytest.mark.parametrize("augment, tta, expected", [
    ("dihedral", 8, tuple(range(8))),
    ("dihedral", 4, (0, 1, 2, 3)),  # the default: the quarter turns of the eight symmetries training drew
    ("dihedral", 2, (0, 4)),
    ("mirror", 4, (0, 4)),  # never a symmetry training did not draw
    ("turns", 2, (0,)),
    ("none", 8, (0,)),
    ("turns", 1, (0,)),
])
def test_a_prediction_averages_the_largest_trained_group_within_train_tta(augment, tta, expected):
    assert views(TrainConfig(augment=augment, tta=tta)) == expected
