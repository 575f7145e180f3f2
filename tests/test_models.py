"""The CNN-LSTM and its ablations: shapes, size, what each one looks at, and safe checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch

from socmap.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from socmap.errors import SocmapError
from socmap.models import CentrePixelLSTM, RefittedCovLSTM, SurveyYearCNN, build_model


@pytest.fixture
def patches():
    return torch.randn(4, 6, 5, 5, 5, generator=torch.Generator().manual_seed(0))  # [B, C, H, W, T]


@pytest.mark.parametrize("name, cls", [("refitted_cov_lstm", RefittedCovLSTM), ("cnn", SurveyYearCNN),
                                       ("lstm", CentrePixelLSTM)])
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


def test_cnn_lstm_reads_every_year_in_order(patches):
    model = build_model("refitted_cov_lstm", bands=6, window_size=5).eval()
    with torch.no_grad():
        base = model(patches)
        earlier = patches.clone()
        earlier[..., 0] += 1.0  # the oldest year
        assert not torch.allclose(model(earlier), base)
        assert not torch.allclose(model(patches.flip(-1)), base)  # order matters: a sequence, not a set


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
    with torch.no_grad():
        base = model(patches)
        earlier = patches.clone()
        earlier[..., :-1] = 0.0
        torch.testing.assert_close(model(earlier), base)
        last = patches.clone()
        last[..., -1] += 1.0
        assert not torch.allclose(model(last), base)


def test_lstm_ablation_sees_only_the_centre_pixel(patches):
    model = build_model("lstm", bands=6, window_size=5).eval()
    with torch.no_grad():
        base = model(patches)
        around = patches.clone()
        around[:, :, 0, :, :] = 9.0
        around[:, :, :, 4, :] = -9.0
        torch.testing.assert_close(model(around), base)
        centre = patches.clone()
        centre[:, :, 2, 2, 0] += 1.0
        assert not torch.allclose(model(centre), base)


def test_bad_model_settings_are_params_errors():
    with pytest.raises(SocmapError, match="train.model = 'transformer'.*refitted_cov_lstm, cnn, lstm"):
        build_model("transformer", bands=6, window_size=5)
    with pytest.raises(SocmapError, match="sample.window_size = 3.*at least 5"):
        build_model("cnn", bands=6, window_size=3)
    assert build_model("lstm", bands=6, window_size=1)(torch.zeros(2, 6, 1, 1, 4)).shape == (2,)


class Payload:
    """Stands for code that a malicious checkpoint would run on unpickling."""


def test_checkpoints_hold_only_plain_data(tmp_path):
    model = build_model("cnn", bands=6, window_size=5)
    save_checkpoint(tmp_path / "ok.pt", {"state_dict": model.state_dict(), "run": 1, "val_metrics": {"r2": 0.5},
                                         "params": {"train": {"lr": 2e-4, "bands": ["LAI"], "x": None}}})
    loaded = load_checkpoint(tmp_path / "ok.pt")
    assert loaded["run"] == 1 and loaded["params"]["train"]["x"] is None
    torch.testing.assert_close(loaded["state_dict"], model.state_dict())
    assert not list(tmp_path.glob(".ok.pt.*")), "no temporary file left behind"

    torch.save({"format": FORMAT, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(SocmapError, match="evil.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(SocmapError, match="plain.pt: not a"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": "socmap-checkpoint/1", "model": {}}, tmp_path / "old.pt")
    with pytest.raises(SocmapError, match=r"old.pt: not a socmap-checkpoint/2 file \(socmap-checkpoint/1: another "
                                          r"socmap version.*retrain with `socmap train`"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(SocmapError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
