"""The field's training-time baselines against model inversion, as loss terms and a model wrapper
that plug into ``recognition.Trainer`` (``augment`` for targets, ``regularizers`` for losses).

- Negative label smoothing (Struppek et al., ICLR 2024, "Be Careful What You Smooth For"):
  targets ``(1 - a) y + a / K`` with a *negative* factor ``a``; it flattens the logit landscape
  that MI attacks climb.
- MID (Wang et al., AAAI 2021): a variational information bottleneck between the embedding and
  the logits; the loss adds ``beta * KL(q(z|x) || N(0, I))``.
- BiDO (Peng et al., KDD 2022): bilateral dependency optimization with HSIC: the hidden features
  should depend little on the input (``lambda_x * HSIC(h, x)``) and much on the label
  (``- lambda_y * HSIC(h, y)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NegLSConfig:
    """Negative label smoothing. Args: factor: the smoothing factor a (negative, e.g. -0.05; > -1)."""

    factor: float = -0.05

    def __post_init__(self) -> None:
        if not -1.0 < self.factor < 1.0:
            raise ValueError(f"label-smoothing factor must be in (-1, 1), got {self.factor}")


def smooth_targets(soft_targets: torch.Tensor, factor: float) -> torch.Tensor:
    """``(1 - a) y + a / K``; with a < 0 the targets leave the simplex (rows still sum to 1)."""
    return (1.0 - factor) * soft_targets + factor / soft_targets.shape[1]


@dataclass(frozen=True)
class MIDConfig:
    """MID. Args: beta: weight of the KL term (the paper's range 0.001 .. 0.05);
    bottleneck: size of the stochastic code z."""

    beta: float = 0.01
    bottleneck: int = 64

    def __post_init__(self) -> None:
        if not (0 <= self.beta < math.inf and self.bottleneck >= 1):  # nan fails
            raise ValueError(f"MID needs beta >= 0 and bottleneck >= 1, got {self.beta}, {self.bottleneck}")


class MIDModel(nn.Module):
    """Wraps a backbone: embedding -> (mu, sigma) -> z ~ N(mu, sigma) (the mean at eval) -> logits.
    Adds ``kl`` (per-batch mean) to the output dict; ``embedding`` becomes ``mu``."""

    def __init__(self, base: nn.Module, embedding_dim: int, num_classes: int, bottleneck: int = 64) -> None:
        super().__init__()
        self.base = base
        self.encode = nn.Linear(embedding_dim, 2 * bottleneck)
        self.head = nn.Linear(bottleneck, num_classes)
        self.bottleneck = bottleneck

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        out = self.base(x)
        stats = self.encode(out["embedding"])
        mu, pre_std = stats[:, :self.bottleneck], stats[:, self.bottleneck:]
        std = F.softplus(pre_std - 5.0)
        z = mu + std * torch.randn_like(std) if self.training else mu
        kl = 0.5 * (mu.square() + std.square() - 2 * torch.log(std.clamp_min(1e-8)) - 1).sum(1).mean()
        return {"embedding": mu, "logits": self.head(z), "hidden": out["hidden"] + [mu], "kl": kl}


def mid_regularizer(beta: float):
    """``beta * KL`` from a ``MIDModel``'s output."""
    def reg(outputs: dict[str, Any], images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return beta * outputs["kl"]
    return reg


@dataclass(frozen=True)
class BiDOConfig:
    """BiDO-HSIC. Args: lambda_x: weight of HSIC(hidden, input) (minimized); lambda_y: weight of
    HSIC(hidden, label) (maximized). Gaussian kernels use the median-distance bandwidth."""

    lambda_x: float = 0.05
    lambda_y: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.lambda_x < math.inf and 0 <= self.lambda_y < math.inf):  # nan fails
            raise ValueError(f"BiDO weights must be >= 0, got {self.lambda_x}, {self.lambda_y}")


def _gaussian_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1)
    d2 = torch.cdist(x, x).square()
    sigma2 = d2.detach()[d2.detach() > 0].median().clamp_min(1e-6) if (d2 > 0).any() else torch.tensor(1.0)
    return torch.exp(-d2 / (2 * sigma2))


def hsic(kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """Biased HSIC estimate from two (B, B) Gram matrices: tr(K H L H) / (B-1)^2."""
    b = kx.shape[0]
    h = torch.eye(b, device=kx.device) - 1.0 / b
    return torch.trace(kx @ h @ ky @ h) / (b - 1) ** 2


def bido_regularizer(config: BiDOConfig):
    """Sum over hidden layers of ``lambda_x HSIC(h, x) - lambda_y HSIC(h, y)``."""
    def reg(outputs: dict[str, Any], images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        kx = _gaussian_gram(images)
        ky = targets @ targets.T  # linear kernel on (soft) labels
        total = images.new_zeros(())
        for h in outputs["hidden"]:
            kh = _gaussian_gram(h)
            total = total + config.lambda_x * hsic(kh, kx) - config.lambda_y * hsic(kh, ky)
        return total
    return reg
