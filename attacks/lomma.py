"""Identity losses of the GAN attacks and LOMMA, the option that strengthens any of them.

LOMMA (Nguyen, Nguyen, Nguyen-Tang, Cheung, "Re-thinking Model Inversion Attacks Against Deep
Neural Networks", CVPR 2023) makes two changes to the inversion step of GMI, KEDMI or PLG-MI:

* the *logit loss* replaces cross-entropy: ``L = -logit_y(x) + lambda * ||phi(x) - p_reg||^2``,
  where ``phi`` is the target's penultimate feature (veil's ``embedding``) and ``p_reg`` the mean
  of those features over public images (as in the authors' code, one mean for all classes);
  cross-entropy saturates once the class wins while the logit keeps pulling, and the feature term
  keeps ``phi(x)`` at the scale of real faces instead of running off to extreme logits;
* *model augmentation*: surrogate models distilled from the target on the public images (KL to
  the target's soft labels); the inversion averages the identity loss of the target and the
  surrogates, so the reconstructions fit the class rather than the target's idiosyncrasies.

Everything here is batched and returns per-sample losses, so restarts optimized together stay
independent (their sum is minimized).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from veil.recognition.device import module_device, to_device
from veil.recognition.models import ModelConfig, build_model

from .cache import cache_key, load_cached, model_fingerprint, save_cached, tensor_fingerprint
from .gan import frozen, run_loop, sample_batch, seeded, to_unit

IDENTITY_LOSSES = ("ce", "max_margin", "logit")


@dataclass(frozen=True)
class LOMMAConfig:
    """Args:
        reg: weight ``lambda`` of ``||phi(x) - p_reg||^2`` in the logit loss (>= 0; the toolbox's
            default is 1).
        surrogates: how many distilled surrogate models to average with the target (>= 0; 0 keeps
            only the logit loss).
        surrogate_model: backbone of the surrogates (a ``recognition`` model name).
        surrogate_width: ``width`` of the ``cnn`` surrogates; surrogate ``i`` gets
            ``surrogate_width * (i + 1)`` so they differ in architecture, not only in seed.
        distill_steps: Adam steps of each surrogate's distillation (>= 1).
        batch_size: public images per distillation step (>= 2).
        lr: Adam learning rate of the distillation (> 0).
        temperature: softmax temperature of the distillation (> 0).
        max_seconds: wall-clock cap on distilling all surrogates (``None``: no cap).
        seed: seeds the surrogates' initialization and batches.
    """

    reg: float = 1.0
    surrogates: int = 1
    surrogate_model: str = "cnn"
    surrogate_width: int = 16
    distill_steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 1.0
    max_seconds: float | None = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reg < 0:
            raise ValueError(f"reg must be >= 0, got {self.reg}")
        if self.surrogates < 0:
            raise ValueError(f"surrogates must be >= 0, got {self.surrogates}")
        if self.surrogate_width < 4:
            raise ValueError(f"surrogate_width must be >= 4, got {self.surrogate_width}")
        if self.distill_steps < 1 or self.batch_size < 2:
            raise ValueError(f"distill_steps must be >= 1 and batch_size >= 2, got {self.distill_steps}, "
                             f"{self.batch_size}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr}, {self.temperature}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")


@dataclass
class LOMMAKit:
    """What LOMMA adds at inversion time: the surrogates (frozen, eval mode) and ``p_reg``."""

    surrogates: list[nn.Module]
    feature_mean: torch.Tensor
    config: LOMMAConfig = field(default_factory=LOMMAConfig)
    distill_seconds: float = 0.0
    from_cache: bool = False


def max_margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PLG-MI's per-sample max-margin loss: ``-logit_y + max_{k != y} logit_k``."""
    real = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - real


def identity_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, kind: str = "ce",
                  kit: LOMMAKit | None = None) -> torch.Tensor:
    """Per-sample identity loss of ``images`` for ``labels`` under ``model`` (``ce``,
    ``max_margin`` or ``logit``); with a LOMMA ``kit`` the logit loss with its feature term,
    averaged with the surrogates' logit losses (LOMMA's model augmentation)."""
    if kind not in IDENTITY_LOSSES:
        raise ValueError(f"identity loss must be one of {IDENTITY_LOSSES}, got {kind!r}")
    out = model(images)
    logits = out["logits"]
    if kit is None:
        if kind == "ce":
            return F.cross_entropy(logits, labels, reduction="none")
        if kind == "max_margin":
            return max_margin_loss(logits, labels)
        return -logits.gather(1, labels[:, None]).squeeze(1)
    losses = [-logits.gather(1, labels[:, None]).squeeze(1)]
    for s in kit.surrogates:
        losses.append(-s(images)["logits"].gather(1, labels[:, None]).squeeze(1))
    reg = (out["embedding"] - kit.feature_mean).square().mean(1)
    return torch.stack(losses).mean(0) + kit.config.reg * reg


@torch.no_grad()
def public_feature_mean(target: nn.Module, public_images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """LOMMA's ``p_reg``: the mean of the target's embedding over the public images (on its device)."""
    device = module_device(target)
    with frozen(target):
        feats = [target(to_unit(to_device(public_images[i:i + batch], device)))["embedding"]
                 for i in range(0, len(public_images), batch)]
    return torch.cat(feats).mean(0)


def _surrogate(target_out: int, images: torch.Tensor, config: LOMMAConfig, i: int) -> nn.Module:
    """Surrogate ``i``: a fresh backbone for the target's classes and the images' shape."""
    _, c, s, _ = images.shape
    return build_model(ModelConfig(name=config.surrogate_model, num_classes=target_out, in_channels=c, image_size=s,
                                   width=config.surrogate_width * (i + 1), embedding_dim=64))


def prepare_lomma(target: nn.Module, public_images: torch.Tensor, config: LOMMAConfig = LOMMAConfig(),
                  cache: bool = True, progress: bool = True) -> LOMMAKit:
    """Distill ``config.surrogates`` models from the target on the public images (KL to its soft
    labels; cached by target weights, public images and config) and compute ``p_reg``. The
    surrogates are built (seeded) on the CPU and trained on the target's device."""
    device = module_device(target)
    with torch.no_grad(), frozen(target):
        num_classes = target(to_unit(to_device(public_images[:2], device)))["logits"].shape[1]
    mean = public_feature_mean(target, public_images)
    models = seeded(config.seed, lambda: [_surrogate(num_classes, public_images, config, i)
                                          for i in range(config.surrogates)])
    models = [m.to(device) for m in models]
    if not models:
        return LOMMAKit([], mean, config)
    key = cache_key("lomma", model_fingerprint(target), tensor_fingerprint(public_images), asdict(config))
    if cache and (blob := load_cached("lomma", key)) is not None:
        for m, sd in zip(models, blob["surrogates"]):
            m.load_state_dict(sd)
        for m in models:
            m.eval().requires_grad_(False)
        return LOMMAKit(models, mean, config, float(blob["seconds"]), True)
    g = torch.Generator().manual_seed(config.seed)
    opts = [torch.optim.Adam(m.parameters(), config.lr) for m in models]
    t = config.temperature
    for m in models:
        m.train()

    def step(_: int) -> dict[str, float]:
        x, _, _ = sample_batch(public_images, config.batch_size, g, device)
        with torch.no_grad(), frozen(target):
            soft = F.log_softmax(target(x)["logits"] / t, 1)
        losses = []
        for m, opt in zip(models, opts):
            loss = F.kl_div(F.log_softmax(m(x)["logits"] / t, 1), soft, log_target=True,
                            reduction="batchmean") * t * t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return {"kl": torch.stack(losses).mean()}  # read only when the bar shows it

    _, secs = run_loop(config.distill_steps, config.max_seconds, "LOMMA surrogates", step, progress)
    for m in models:
        m.eval().requires_grad_(False)
    if cache:
        save_cached("lomma", key, {"surrogates": [m.state_dict() for m in models], "seconds": secs})
    return LOMMAKit(models, mean, config, secs)
