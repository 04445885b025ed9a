"""Backbones: one output contract, input checks, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from veil.recognition.models import ModelConfig, build_model


@pytest.mark.parametrize("name,size", [("cnn", 32), ("resnet18", 32), ("inception", 80)])
def test_every_backbone_returns_embedding_logits_and_hidden(name: str, size: int) -> None:
    model = build_model(ModelConfig(name=name, num_classes=7, image_size=size)).eval()
    out = model(torch.rand(2, 3, size, size))
    assert out["logits"].shape == (2, 7)
    assert out["embedding"].ndim == 2 and out["embedding"].shape[0] == 2
    assert len(out["hidden"]) >= 3
    assert all(h.shape[0] == 2 for h in out["hidden"])


def test_one_channel_models_take_grey_input() -> None:
    model = build_model(ModelConfig(name="cnn", num_classes=3, in_channels=1))
    assert model(torch.rand(4, 1, 32, 32))["logits"].shape == (4, 3)


def test_default_cnn_has_no_batchnorm() -> None:
    model = build_model(ModelConfig())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_inception_refuses_images_under_75_px() -> None:
    with pytest.raises(ValueError, match="75 px"):
        ModelConfig(name="inception", image_size=64)


def test_wrong_input_shape_is_a_clear_error() -> None:
    model = build_model(ModelConfig(num_classes=3))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(2, 1, 32, 32))


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="vgg"):
        ModelConfig(name="vgg")


def test_weights_file_round_trip(tmp_path: Path) -> None:
    a = build_model(ModelConfig(num_classes=5))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = build_model(ModelConfig(num_classes=5, weights=str(tmp_path / "w.pt"))).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(a.eval()(x)["logits"], b(x)["logits"])


def test_backbone_weights_with_another_head_size_load_with_a_warning(tmp_path: Path) -> None:
    a = build_model(ModelConfig(num_classes=9))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    with pytest.warns(UserWarning, match="another shape"):
        b = build_model(ModelConfig(num_classes=5, weights=str(tmp_path / "w.pt")))
    assert torch.equal(a.stages[0][0].weight, b.stages[0][0].weight)


def test_mismatched_weights_file_is_an_error(tmp_path: Path) -> None:
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="does not match"):
        build_model(ModelConfig(num_classes=5, weights=str(tmp_path / "w.pt")))


def test_cnn_head_reads_the_embedding_even_when_every_unit_is_negative() -> None:
    # a ReLU before the head would make the logits constant here (the CFP collapse)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn", num_classes=4, in_channels=1, width=8)).eval()
    with torch.no_grad():
        model.embed.bias.fill_(-1e3)
        out = model(torch.rand(3, 1, 64, 64))
    assert (out["embedding"] < 0).all()
    assert out["logits"].std(0).max() > 1e-3


def test_checkpoint_without_head_relu_key_rebuilds_the_legacy_head() -> None:
    from dataclasses import asdict

    from veil.recognition import model_config_from_checkpoint

    stored = asdict(ModelConfig(num_classes=4, in_channels=1))
    assert model_config_from_checkpoint(stored).head_relu is False
    del stored["head_relu"]
    legacy = model_config_from_checkpoint(stored)
    assert legacy.head_relu is True
    model = build_model(legacy).eval()
    with torch.no_grad():
        model.embed.bias.fill_(-1e3)
        logits = model(torch.rand(3, 1, 64, 64))["logits"]
    assert torch.allclose(logits, model.head.bias.expand(3, -1))
