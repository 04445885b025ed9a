"""The PCA-prior model-inversion attack: cheap, face-like, and veil's default probe.

Principal components are fitted on the public split (the attacker's prior); the attack
optimizes whitened coefficients ``c`` so that ``x = mean + U diag(s) c`` maximizes the target's
log-probability of the private class, with an L2 penalty on ``c`` that keeps ``x`` close to the
face subspace's typical set. All identities and seeds are attacked in one batch, on the
target's device (the random start is drawn on the CPU generator and moved there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from veil.recognition.device import module_device


@dataclass(frozen=True)
class PCAAttackConfig:
    """Args:
        components: principal components kept (<= number of public images).
        steps: Adam steps on the coefficients.
        lr: Adam learning rate.
        l2: weight of the penalty ``mean(c^2)`` (0 = none).
        init_std: spread of the random start in whitened units (0: start at the mean face).
        seeds: restarts per identity; each gives one reconstruction.
    """

    components: int = 64
    steps: int = 100
    lr: float = 0.1
    l2: float = 0.01
    init_std: float = 0.5
    seeds: int = 2

    def __post_init__(self) -> None:
        if self.components < 1 or self.steps < 1 or self.seeds < 1:
            raise ValueError(f"components, steps and seeds must be >= 1, got {self.components}, "
                             f"{self.steps}, {self.seeds}")
        if self.lr <= 0 or self.l2 < 0 or self.init_std < 0:
            raise ValueError(f"lr must be > 0, l2 and init_std >= 0, got {self.lr}, {self.l2}, {self.init_std}")


@dataclass
class FacePrior:
    """A PCA face model: ``x = mean + (c * scale) @ basis`` reshaped to ``shape``."""

    mean: torch.Tensor  # (D,)
    basis: torch.Tensor  # (k, D), orthonormal rows
    scale: torch.Tensor  # (k,), singular values / sqrt(n - 1): the std along each component
    shape: tuple[int, int, int]

    @classmethod
    def fit(cls, images: torch.Tensor, components: int) -> "FacePrior":
        """Fit on uint8 or [0, 1] images (N, C, H, W)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"a PCA prior needs at least 2 public images, got {n}")
        flat = x.reshape(n, -1)
        mean = flat.mean(0)
        k = min(components, n - 1)
        _, s, v = torch.linalg.svd(flat - mean, full_matrices=False)
        return cls(mean=mean, basis=v[:k].contiguous(), scale=s[:k] / (n - 1) ** 0.5, shape=tuple(x.shape[1:]))

    def to(self, device: torch.device) -> "FacePrior":
        """This prior with its tensors on ``device`` (itself when they are there)."""
        if self.mean.device == device:
            return self
        return FacePrior(self.mean.to(device), self.basis.to(device), self.scale.to(device), self.shape)

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Whitened coefficients (B, k) -> images (B, C, H, W) clipped to [0, 1]."""
        flat = self.mean + (coeffs * self.scale) @ self.basis
        return flat.reshape(-1, *self.shape).clamp(0.0, 1.0)


def pca_attack(target: nn.Module, prior: FacePrior, classes: torch.Tensor, config: PCAAttackConfig = PCAAttackConfig(),
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct each class in ``classes`` ``config.seeds`` times.

    Returns images (len(classes) * seeds, C, H, W) in [0, 1], class-major, and their classes.
    The target's parameters are not changed (it is put in eval mode for the attack).
    """
    was_training = target.training
    target.eval()
    device = module_device(target)
    prior = prior.to(device)
    labels = classes.repeat_interleave(config.seeds).to(device)
    k = prior.basis.shape[0]
    coeffs = (config.init_std * torch.randn(len(labels), k, generator=generator)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([coeffs], lr=config.lr)
    params = [p for p in target.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(config.steps):
            logits = target(prior.decode(coeffs))["logits"]
            loss = nn.functional.cross_entropy(logits, labels) + config.l2 * coeffs.square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        target.train(was_training)
    with torch.no_grad():
        return prior.decode(coeffs), labels
