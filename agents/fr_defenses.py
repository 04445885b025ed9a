"""Turn ``--defense re,mixup,...`` and its options into what ``recognition.Trainer`` takes: a
batch ``augment`` callable, loss ``regularizers``, a wrapped model (MID) and the TL-DMI
pre-training step. The defenses themselves live in ``defenses/``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from veil.defenses.baselines import (BiDOConfig, MIDConfig, MIDModel, NegLSConfig, bido_regularizer, mid_regularizer,
                                smooth_targets)
from veil.defenses.dp import DPConfig
from veil.defenses.erasing import EraseConfig
from veil.defenses.hybrid import HybridConfig, augment
from veil.defenses.mixup import MixConfig
from veil.defenses.tldmi import TLDMIConfig

DEFENSES = ("none", "re", "mixup", "hybrid", "tldmi", "negls", "mid", "bido", "dp")


def parse_defenses(text: str) -> tuple[str, ...]:
    """``"re,tldmi"`` -> ``("re", "tldmi")``; ``hybrid`` means ``re`` + ``mixup``."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise ValueError(f"unknown defense {unknown[0]!r}; choose from {', '.join(DEFENSES)} (comma-separated)")
    if "none" in names and len(names) > 1:
        raise ValueError("'none' cannot be combined with other defenses")
    out: list[str] = []
    for n in names:
        for m in (("re", "mixup") if n == "hybrid" else (n,)):
            if m not in out:
                out.append(m)
    return tuple(out) or ("none",)


@dataclass
class DefenseOptions:
    """Every defense's parameters (only those named in ``names`` are used)."""

    names: tuple[str, ...] = ("none",)
    erase: EraseConfig = field(default_factory=EraseConfig)
    mix: MixConfig = field(default_factory=lambda: MixConfig(k=3, band=(0.0, 0.5)))
    negls: NegLSConfig = field(default_factory=NegLSConfig)
    mid: MIDConfig = field(default_factory=MIDConfig)
    bido: BiDOConfig = field(default_factory=BiDOConfig)
    tldmi: TLDMIConfig = field(default_factory=TLDMIConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """The parameters worth logging: those of the defenses in use."""
        out: dict[str, Any] = {"names": ",".join(self.names)}
        table = {"re": self.erase, "mixup": self.mix, "negls": self.negls, "mid": self.mid, "bido": self.bido,
                 "tldmi": self.tldmi, "dp": self.dp}
        for name, cfg in table.items():
            if name in self.names:
                out[name] = asdict(cfg)
        return out


Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_augment(opts: DefenseOptions) -> Augment | None:
    """The per-batch transform of images and soft targets, or ``None`` when nothing transforms them."""
    hybrid = HybridConfig(mix=opts.mix if "mixup" in opts.names else None,
                          erase=opts.erase if "re" in opts.names else None)
    if hybrid.mix is None and hybrid.erase is None:
        return with_label_defenses(None, opts)
    generator = torch.Generator().manual_seed(opts.seed + 7919)

    def transform(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(images, targets, hybrid, generator)

    return with_label_defenses(transform, opts)


def with_label_defenses(image_augment: Augment | None, opts: DefenseOptions) -> Augment | None:
    """Chain the label-side defenses (negative label smoothing) after an image augmentation: fixed
    erasing/MixUp or a learned policy. The smoothing acts on the targets the augmentation mixed."""
    if "negls" not in opts.names:
        return image_augment
    factor = opts.negls.factor

    def transform(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image_augment is not None:
            images, targets = image_augment(images, targets)
        return images, smooth_targets(targets, factor)

    return transform


def wrap_model(model: nn.Module, opts: DefenseOptions, embedding_dim: int, num_classes: int) -> nn.Module:
    """MID puts a variational bottleneck between the embedding and the logits."""
    if "mid" in opts.names:
        return MIDModel(model, embedding_dim, num_classes, opts.mid.bottleneck)
    return model


def regularizers(opts: DefenseOptions) -> list:
    regs = []
    if "mid" in opts.names:
        regs.append(mid_regularizer(opts.mid.beta))
    if "bido" in opts.names:
        regs.append(bido_regularizer(opts.bido))
    return regs


def embedding_dim(model: nn.Module, channels: int, size: int) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        dim = int(model(torch.zeros(1, channels, size, size))["embedding"].shape[1])
        model.train(was)
    return dim


def transfer_backbone(source: nn.Module, target: nn.Module) -> int:
    """Copy every tensor of matching name and shape (the backbone, not the head); return how many."""
    own = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)
    return len(shared)
