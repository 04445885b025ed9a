"""DP-SGD (Abadi et al. 2016) through Opacus: per-sample gradient clipping and Gaussian noise,
with the RDP accountant reporting the (epsilon, delta) spent.

Supported models: those Opacus can compute per-sample gradients for and that have no BatchNorm,
i.e. veil's default small CNN (GroupNorm). ResNet-18 and InceptionResnetV1 use BatchNorm and are
refused with Opacus's own explanation. The accountant assumes Poisson sampling at rate B/N;
veil's loader draws shuffled fixed-size batches, the usual approximation in practice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DPConfig:
    """Args:
        epsilon: target epsilon over the whole run (sets the noise multiplier), or ``None`` to
            use ``noise_multiplier`` as given.
        delta: target delta (default 1e-5; keep it below 1/N).
        max_grad_norm: per-sample gradient clipping bound C.
        noise_multiplier: sigma, used when ``epsilon`` is ``None``.
    """

    epsilon: float | None = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0

    def __post_init__(self) -> None:
        # written so that nan fails every check (a nan compares false both ways)
        if self.epsilon is not None and not 0 < self.epsilon < math.inf:
            raise ValueError(f"DP epsilon must be a number > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"DP delta must be in (0, 1), got {self.delta}")
        if not (0 < self.max_grad_norm < math.inf and 0 <= self.noise_multiplier < math.inf):
            raise ValueError(f"DP needs max_grad_norm > 0 and noise_multiplier >= 0, got "
                             f"{self.max_grad_norm}, {self.noise_multiplier}")


class PrivacyLedger:
    """The accountant of a DP run: ``epsilon()`` is what has been spent so far."""

    def __init__(self, accountant, delta: float, noise_multiplier: float, sample_rate: float) -> None:
        self.accountant = accountant
        self.delta = delta
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta)) if self.accountant.history else 0.0


def make_private(trainer, config: DPConfig, n_train: int, epochs: int) -> PrivacyLedger:
    """Turn ``trainer`` (a ``recognition.Trainer``) into a DP-SGD trainer in place: its model
    computes per-sample gradients, its optimizer clips them and adds noise."""
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(trainer.model, strict=False)
    if errors:
        raise ValueError(f"DP-SGD cannot train this model: {errors[0]} (use --model cnn, which uses GroupNorm)")
    batch = trainer.config.batch_size
    sample_rate = min(1.0, batch / n_train)
    sigma = config.noise_multiplier
    if config.epsilon is not None:
        # the steps veil will take (ceil per epoch), not epochs / sample_rate, so the target holds
        steps = epochs * math.ceil(n_train / batch)
        sigma = get_noise_multiplier(target_epsilon=config.epsilon, target_delta=config.delta,
                                     sample_rate=sample_rate, steps=steps, accountant="rdp")
    trainer.model = GradSampleModule(trainer.model, loss_reduction="mean")
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    base = type(trainer.optimizer)(params, **{k: v for k, v in trainer.optimizer.defaults.items()
                                              if k not in ("differentiable", "fused", "foreach", "capturable")})
    optimizer = DPOptimizer(base, noise_multiplier=sigma, max_grad_norm=config.max_grad_norm,
                            expected_batch_size=batch, loss_reduction="mean")
    accountant = RDPAccountant()
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    trainer.optimizer = optimizer
    return PrivacyLedger(accountant, config.delta, sigma, sample_rate)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside an Opacus ``GradSampleModule`` (for saving and serving)."""
    return getattr(model, "_module", model)
