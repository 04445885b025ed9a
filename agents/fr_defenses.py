"""Turn ``--defense re,mixup,...`` and its options into what ``recognition.Trainer`` takes: a
batch ``augment`` callable, loss ``regularizers``, a wrapped model (MID, LoFt), Trap-MID's
per-step trigger update (``before_step``) and the TL-DMI pre-training step. The defenses
themselves live in ``defenses/``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from veil.defenses.baselines import (
    BiDOConfig,
    MIDConfig,
    MIDModel,
    NegLSConfig,
    bido_regularizer,
    mid_regularizer,
    smooth_targets,
)
from veil.defenses.dp import DPConfig
from veil.defenses.erasing import EraseConfig
from veil.defenses.hybrid import HybridConfig, augment
from veil.defenses.loft import LoFtConfig, LoFtModel
from veil.defenses.mixup import MixConfig
from veil.defenses.tldmi import TLDMIConfig
from veil.defenses.trapmid import TrapMID, TrapMIDConfig, before_step_hook, trapdoor_augment
from veil.recognition import ModelConfig, Trainer, build_model
from veil.recognition.trainer import make_optimizer

DEFENSES = ("none", "re", "mixup", "hybrid", "tldmi", "negls", "mid", "bido", "dp", "trapmid", "loft")
EXCLUSIVE = {("mid", "loft"): "both replace the classifier head",
             ("dp", "trapmid"): "DP-SGD's per-sample gradients do not cover Trap-MID's trigger and discriminator "
                                "passes",
             ("dp", "loft"): "LoFt's neck has a BatchNorm, which Opacus refuses"}


def parse_defenses(text: str) -> tuple[str, ...]:
    """``"re,tldmi"`` -> ``("re", "tldmi")``; ``hybrid`` means ``re`` + ``mixup``."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise ValueError(f"unknown defense {unknown[0]!r}; choose from {', '.join(DEFENSES)} (comma-separated)")
    if "none" in names and len(names) > 1:
        raise ValueError("'none' cannot be combined with other defenses")
    for (a, b), why in EXCLUSIVE.items():
        if a in names and b in names:
            raise ValueError(f"{a} and {b} cannot be combined: {why}")
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
    trapmid: TrapMIDConfig = field(default_factory=TrapMIDConfig)
    loft: LoFtConfig = field(default_factory=LoFtConfig)
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """The parameters worth logging: those of the defenses in use."""
        out: dict[str, Any] = {"names": ",".join(self.names)}
        table = {"re": self.erase, "mixup": self.mix, "negls": self.negls, "mid": self.mid, "bido": self.bido,
                 "tldmi": self.tldmi, "dp": self.dp, "trapmid": self.trapmid, "loft": self.loft}
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
    """Chain the defenses that go with any image augmentation (fixed erasing/MixUp, a learned
    policy or a schedule): Trap-MID's geometric augmentation of the clean branch before it, the
    label-side defenses (negative label smoothing) after it, on the targets it mixed."""
    geometric = "trapmid" in opts.names and opts.trapmid.augment
    if "negls" not in opts.names and not geometric:
        return image_augment
    smooth = "negls" in opts.names
    factor = opts.negls.factor
    generator = torch.Generator().manual_seed(opts.seed + 2 * 7919)

    def transform(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if geometric:
            images = trapdoor_augment(images, generator)
        if image_augment is not None:
            images, targets = image_augment(images, targets)
        return images, smooth_targets(targets, factor) if smooth else targets

    return transform


def wrap_model(model: nn.Module, opts: DefenseOptions, embedding_dim: int, num_classes: int) -> nn.Module:
    """MID puts a variational bottleneck between the embedding and the logits, LoFt a rank-r neck."""
    if "mid" in opts.names:
        return MIDModel(model, embedding_dim, num_classes, opts.mid.bottleneck)
    if "loft" in opts.names:
        return LoFtModel(model, embedding_dim, num_classes, opts.loft)
    return model


def wrap_recorded(model: nn.Module, record: dict[str, Any], embedding_dim: int, num_classes: int) -> nn.Module:
    """``wrap_model`` from a checkpoint's defense record (``DefenseOptions.params()``), so a saved
    target is rebuilt with the wrappers it was trained with."""
    def config(cls: type, key: str) -> Any:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.get(key, {}).items() if k in names})

    opts = DefenseOptions(names=tuple(n for n in str(record.get("names", "")).split(",") if n) or ("none",),
                          mid=config(MIDConfig, "mid"), loft=config(LoFtConfig, "loft"))
    return wrap_model(model, opts, embedding_dim, num_classes)


def regularizers(opts: DefenseOptions) -> list:
    regs = []
    if "mid" in opts.names:
        regs.append(mid_regularizer(opts.mid.beta))
    if "bido" in opts.names:
        regs.append(bido_regularizer(opts.bido))
    return regs


def attach_trapmid(trainer: Trainer, opts: DefenseOptions, model_config: ModelConfig) -> TrapMID | None:
    """Trap-MID on ``trainer``: triggers for its classes, a discriminator of the target's
    architecture (own weights, seeded apart) trained with the target's optimizer settings and
    learning-rate schedule, the trigger update as a ``before_step`` hook and the trapdoor loss as a
    regularizer. ``None`` when Trap-MID is not among the defenses."""
    if "trapmid" not in opts.names:
        return None
    cfg = opts.trapmid
    discriminator = optimizer = None
    if cfg.discriminator:
        with torch.random.fork_rng():  # the target's own draws do not depend on whether there is one
            torch.manual_seed(opts.seed + 104_729)
            discriminator = build_model(replace(model_config, num_classes=2, weights=None)).to(trainer.device)
        optimizer = make_optimizer(discriminator, trainer.config)
    trap = TrapMID(trainer.model, trainer.num_classes, (model_config.in_channels, model_config.image_size,
                                                        model_config.image_size), cfg, discriminator, optimizer,
                   label_smoothing=opts.negls.factor if "negls" in opts.names else 0.0, seed=opts.seed + 15_485_863,
                   device=trainer.device)
    trainer.before_step.append(before_step_hook(trap, lambda: trainer.lr_at(trainer.global_step)))
    trainer.regularizers.append(trap.loss_term)
    return trap


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
