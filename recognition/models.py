"""Face-recognition backbones with one output contract.

Every model takes images in [0, 1] of shape (B, C, H, W) and returns a dict with
``embedding`` (B, D), ``logits`` (B, num_classes) and ``hidden`` (a list of intermediate
feature maps, shallow to deep): BiDO and MID regularize those, attacks read the embedding.
Input normalization happens inside the model, so attacks and defenses work in pixel space.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODEL_NAMES = ("cnn", "resnet18", "inception")


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone to build and for what data.

    Args:
        name: one of ``cnn`` (fast small CNN, GroupNorm; the default), ``resnet18``
            (torchvision, from scratch), ``inception`` (facenet-pytorch InceptionResnetV1).
        num_classes: number of identities the classifier head predicts.
        in_channels: 1 for grey data, 3 for RGB.
        image_size: side of the square input; InceptionResnetV1 needs >= 75 px.
        embedding_dim: size of the embedding for ``cnn`` (the others have fixed sizes).
        width: channel multiplier of ``cnn``.
        dropout: dropout before the classifier head.
        head_relu: ``cnn`` only: a ReLU between the embedding and the head. Checkpoints written
            before veil 0.4 had it; it can die (every embedding unit negative leaves the head a
            constant, seen on CFP with random erasing), so new models read the embedding directly.
        weights: optional path to a local state dict to start from: a veil model's, torchvision's
            ResNet-18 (ImageNet) or facenet-pytorch's InceptionResnetV1 (VGGFace2, CASIA-WebFace);
            checked by shape, its classifier head re-learned, never downloaded (``load_weights``).
    """

    name: str = "cnn"
    num_classes: int = 50
    in_channels: int = 3
    image_size: int = 64
    embedding_dim: int = 128
    width: int = 32
    dropout: float = 0.0
    head_relu: bool = False
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model name {self.name!r} is not one of {MODEL_NAMES}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.name == "inception" and self.image_size < 75:
            raise ValueError(
                f"InceptionResnetV1 needs images of at least 75 px, got image_size={self.image_size}; "
                "use --image-size 112 (or 96) with --model inception"
            )


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] pixels to [-1, 1], the range every backbone here is trained on."""
    return (x - 0.5) / 0.5


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected images of shape (B, {in_channels}, H, W), got {tuple(x.shape)}"
        )


class SmallCNN(nn.Module):
    """Fast CPU face classifier: four conv stages with GroupNorm (no BatchNorm, so Opacus
    accepts it and frozen-weight evaluation cannot drift), a 4x4 pooled map, an embedding
    layer and a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32,
                 embedding_dim: int = 128, dropout: float = 0.0, head_relu: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.head_relu = head_relu
        chans = [width, width * 2, width * 4, width * 8]
        stages = []
        prev = in_channels
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [
                nn.Conv2d(prev, c, 3, padding=1, bias=False),
                nn.GroupNorm(min(8, c), c),
                nn.ReLU(),  # not in place: Opacus' per-sample gradient hooks forbid it
            ]
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            prev = c
        self.stages = nn.ModuleList(stages)
        # Faces are told apart by where things are, so the embedding reads a 4x4 spatial map
        # (as the "output layer E" of ArcFace-style FR nets) rather than a global average.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.embed = nn.Linear(prev * 16, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        _check_input(x, self.in_channels)
        h = _normalize(x)
        hidden = []
        for stage in self.stages:
            h = stage(h)
            hidden.append(h)
        emb = self.embed(self.pool(h).flatten(1))
        hidden.append(emb)
        logits = self.head(self.dropout(F.relu(emb) if self.head_relu else emb))
        return {"embedding": emb, "logits": logits, "hidden": hidden}


class ResNet18(nn.Module):
    """torchvision ResNet-18 trained from scratch (no weights can be downloaded here)."""

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.in_channels = in_channels
        net = resnet18(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.net = net
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        _check_input(x, self.in_channels)
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(_normalize(x)))))
        hidden = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            h = layer(h)
            hidden.append(h)
        emb = torch.flatten(n.avgpool(h), 1)
        hidden.append(emb)
        logits = n.fc(self.dropout(emb))
        return {"embedding": emb, "logits": logits, "hidden": hidden}


class InceptionFace(nn.Module):
    """facenet-pytorch ``InceptionResnetV1(classify=True)`` from scratch or from a user file.

    Its pretrained weights are not in the wheel and cannot be downloaded here: pass
    ``ModelConfig.weights`` to load a local state dict. Inputs must be >= 75 px.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.in_channels = in_channels
        self.net = InceptionResnetV1(pretrained=None, classify=True, num_classes=num_classes,
                                     dropout_prob=max(dropout, 0.0))
        if in_channels != 3:
            conv = self.net.conv2d_1a.conv
            self.net.conv2d_1a.conv = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,
                                                conv.stride, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        _check_input(x, self.in_channels)
        if min(x.shape[-2:]) < 75:
            raise ValueError(f"InceptionResnetV1 needs inputs of at least 75 px, got {tuple(x.shape[-2:])}")
        n = self.net
        h = _normalize(x)
        hidden = []
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b",
                     "conv2d_4a", "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2",
                     "mixed_7a", "repeat_3", "block8"):
            h = getattr(n, name)(h)
            if name in ("conv2d_4b", "repeat_1", "repeat_2", "block8"):
                hidden.append(h)
        h = n.dropout(n.avgpool_1a(h))
        emb = n.last_bn(n.last_linear(h.flatten(1)))
        hidden.append(emb)
        logits = n.logits(emb)
        return {"embedding": emb, "logits": logits, "hidden": hidden}


class LogitsOnly(nn.Module):
    """Serving wrapper: ``[0, 1]`` images -> logits (MLflow models want one tensor out)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["logits"]


def model_config_from_checkpoint(stored: dict) -> ModelConfig:
    """Rebuild the ``ModelConfig`` a checkpoint was written with. Checkpoints from before
    ``head_relu`` existed had the ReLU before the head, so a missing key means ``True``."""
    return ModelConfig(**{"head_relu": True, **stored, "weights": None})


def build_model(config: ModelConfig) -> nn.Module:
    """Build the backbone named by ``config`` (and load its local weights, if given)."""
    if config.name == "cnn":
        model: nn.Module = SmallCNN(config.num_classes, config.in_channels, config.width,
                                    config.embedding_dim, config.dropout, config.head_relu)
    elif config.name == "resnet18":
        model = ResNet18(config.num_classes, config.in_channels, config.dropout)
    else:
        model = InceptionFace(config.num_classes, config.in_channels, config.dropout)
    if config.weights:
        load_weights(model, config.weights)
    return model


HEADS = {"SmallCNN": "head.", "ResNet18": "net.fc.", "InceptionFace": "net.logits."}
"""Each backbone's classifier head (its keys' prefix): the layer re-learned on the private identities."""


def load_weights(model: nn.Module, path: str) -> None:
    """Load a local state dict into ``model``; nothing is ever downloaded.

    The file is a veil model's state dict (or a checkpoint holding one), or a bare file of the
    wrapped network, keys without the ``net.`` prefix: torchvision's ResNet-18 (ImageNet) or
    facenet-pytorch's InceptionResnetV1 (VGGFace2, CASIA-WebFace). A bare file's classifier head (1000
    ImageNet classes, 8631 or 10575 identities) is never loaded, and neither is a head of another
    size (with a warning): the head is re-learned on the private identities. Every other tensor
    must be there with the model's shape; else a one-line error names the file and the first
    mismatching key.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"weights file {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused the same way
        raise ValueError(f"weights file {path} is not a readable state dict "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict")
    own = model.state_dict()
    head = HEADS.get(type(model).__name__, "\0")
    bare = hasattr(model, "net") and not any(k in own for k in state)
    if bare:  # torchvision's or facenet-pytorch's own file: its head is for its own classes
        state = {f"net.{k}": v for k, v in state.items() if not f"net.{k}".startswith(head)}
    unexpected = [k for k in state if k not in own]
    if unexpected:
        matched = len(state) - len(unexpected)
        raise ValueError(f"weights file {path} does not match this model: {matched} matching, "
                         f"{len(unexpected)} unexpected keys (first: {unexpected[0]!r})")
    wrong = [k for k, v in state.items() if own[k].shape != v.shape and not k.startswith(head)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"weights file {path} does not match this model: {k!r} is {tuple(state[k].shape)} in the "
                         f"file, {tuple(own[k].shape)} in the model ({len(wrong)} mismatching tensors)")
    missing = [k for k in own if k not in state and not k.startswith(head)]
    if missing:
        raise ValueError(f"weights file {path} does not match this model: it lacks {missing[0]!r} "
                         f"({len(missing)} of the model's tensors missing)")
    skipped = [k for k, v in state.items() if own[k].shape != v.shape]
    if skipped:
        warnings.warn(f"{path}: skipped the classifier head of another shape ({', '.join(skipped)}); "
                      "it is re-learned", stacklevel=2)
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
