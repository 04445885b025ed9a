"""TL-DMI (Ho et al., CVPR 2024, "Model Inversion Robustness: Can Transfer Learning Help?"):
pre-train the backbone on the public identities, then freeze its first layers and fine-tune only
the rest on the private ones, so fewer parameters encode private information."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class TLDMIConfig:
    """Args:
        freeze: where freezing stops: a fraction in (0, 1) of the parameter tensors (in
            definition order), or the name prefix of the first parameter left trainable
            (e.g. ``stages.3`` for the small CNN, ``net.layer4`` for ResNet-18).
        pretrain_epochs: epochs on the public split before fine-tuning.
    """

    freeze: str | float = 0.6
    pretrain_epochs: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.freeze, float) and not 0.0 < self.freeze < 1.0:
            raise ValueError(f"freeze fraction must be in (0, 1), got {self.freeze}")
        if self.pretrain_epochs < 1:
            raise ValueError(f"pretrain_epochs must be >= 1, got {self.pretrain_epochs}")


def freeze_until(model: nn.Module, point: str | float) -> list[str]:
    """Freeze every parameter before ``point`` (see ``TLDMIConfig.freeze``); return their names.
    Classifier heads are never frozen."""
    names = [n for n, _ in model.named_parameters()]
    if isinstance(point, str):
        try:
            point = float(point)
        except ValueError:
            pass
    if isinstance(point, float):
        if not 0.0 < point < 1.0:
            raise ValueError(f"freeze fraction must be in (0, 1), got {point}")
        stop = int(round(point * len(names)))
    else:
        matches = [i for i, n in enumerate(names) if n.startswith(point)]
        if not matches:
            raise ValueError(f"no parameter name starts with {point!r}; names run from {names[0]!r} to {names[-1]!r}")
        stop = matches[0]
    frozen = []
    for i, (name, p) in enumerate(model.named_parameters()):
        if i < stop and not name.startswith(("head", "net.fc", "net.logits")):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
