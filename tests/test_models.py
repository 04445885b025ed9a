"""Backbones: one output contract, input checks, local weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from facenet_pytorch import InceptionResnetV1
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


# ----------------------------------------------------------------------------------- pretrained files

@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args[:1]}")

    for name in ("torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file", "urllib.request.urlopen",
                 "urllib.request.urlretrieve", "facenet_pytorch.models.inception_resnet_v1.download_url_to_file"):
        monkeypatch.setattr(name, refuse, raising=False)


def _fresh_and_loaded(config: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(7)
    fresh = build_model(replace(config, weights=None))
    torch.manual_seed(7)
    return fresh, build_model(config)


@pytest.mark.parametrize("num_classes", [10, 1000])  # 1000 private identities: ImageNet's fc is still not loaded
def test_torchvision_resnet18_imagenet_file_loads_the_backbone_and_leaves_the_head_fresh(
        tmp_path: Path, no_network: None, num_classes: int) -> None:
    torch.manual_seed(0)
    file_state = torchvision.models.resnet18(weights=None).state_dict()  # the layout of the ImageNet file
    torch.save(file_state, tmp_path / "resnet18-imagenet.pth")
    fresh, model = _fresh_and_loaded(ModelConfig(name="resnet18", num_classes=num_classes,
                                                 weights=str(tmp_path / "resnet18-imagenet.pth")))
    own = model.state_dict()
    assert all(torch.equal(own[f"net.{k}"], v) for k, v in file_state.items() if not k.startswith("fc."))
    assert torch.equal(own["net.fc.weight"], fresh.state_dict()["net.fc.weight"])
    assert not torch.equal(own["net.fc.weight"][:10], file_state["fc.weight"][:10])


@pytest.mark.parametrize("identities", [8631, 10575])  # VGGFace2, CASIA-WebFace
def test_facenet_inception_file_loads_the_backbone_and_skips_its_logits(
        tmp_path: Path, no_network: None, identities: int) -> None:
    torch.manual_seed(0)
    file_state = InceptionResnetV1(classify=True, num_classes=identities).state_dict()
    torch.save(file_state, tmp_path / "inception.pt")
    fresh, model = _fresh_and_loaded(ModelConfig(name="inception", num_classes=12, image_size=112,
                                                 weights=str(tmp_path / "inception.pt")))
    own = model.state_dict()
    assert own["net.logits.weight"].shape == (12, 512)
    assert torch.equal(own["net.logits.weight"], fresh.state_dict()["net.logits.weight"])
    body = [k for k in file_state if not k.startswith("logits.")]
    assert len(body) > 400 and all(torch.equal(own[f"net.{k}"], file_state[k]) for k in body)


def test_a_weights_file_of_another_network_is_a_one_line_error_naming_the_file_and_key(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth does not match this model.*'net\.conv1\.weight'") as err:
        build_model(ModelConfig(name="inception", num_classes=5, image_size=112, weights=str(tmp_path / "resnet.pth")))
    assert "\n" not in str(err.value)


def test_a_weights_file_of_another_shape_is_an_error_naming_the_first_mismatching_key(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "rgb.pth")
    with pytest.raises(ValueError, match=r"rgb\.pth .*'net\.conv1\.weight' is \(64, 3, 7, 7\) in the file, "
                                         r"\(64, 1, 7, 7\) in the model"):
        build_model(ModelConfig(name="resnet18", num_classes=5, in_channels=1, weights=str(tmp_path / "rgb.pth")))


def test_a_weights_file_missing_backbone_tensors_is_an_error(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth .*lacks 'net\.layer4\.1\.bn2\.running_var'"):
        build_model(ModelConfig(name="resnet18", num_classes=5, weights=str(tmp_path / "partial.pth")))


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_an_unreadable_or_missing_weights_file_is_a_one_line_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"weights file .*w\.pt (is not a readable|does not exist)") as err:
        build_model(ModelConfig(num_classes=5, weights=str(path)))
    assert "\n" not in str(err.value)
