"""White-box model inversion (Fredrikson, Jha and Ristenpart, "Model Inversion Attacks that
Exploit Confidence Information and Basic Countermeasures", CCS 2015), with the image priors the
field added since (total variation, as in Mahendran and Vedaldi 2015 / DeepInversion, and an L2
pull towards the public mean face).

The pixels themselves are optimized: starting from the public split's mean face (plus a little
noise per restart), Adam lowers ``CE(target(x), c) + tv * TV(x) + l2 * mean((x - mean_face)^2)``
and every step projects back onto [0, 1]. All identities and restarts are one batch.

This is the *weak* attack, kept as the field's historical baseline and as a sanity check of the
harness: nothing ties ``x`` to the face manifold, so on a deep target it finds textures and
adversarial patterns the target scores at probability ~1.0 that neither a person nor an
evaluation model of another architecture would call the identity (veil's AT&T trial: from noise,
target confidence 1.0, no face). The priors and the mean-face start keep it near a face longer;
the PCA-prior attack (``veil.attacks.pca``) and the GAN attacks are the ones that measure leakage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from veil.recognition.device import module_device


@dataclass(frozen=True)
class WhiteBoxConfig:
    """Args:
        steps: Adam steps on the pixels (>= 1).
        lr: Adam learning rate in pixel units (> 0); pixels are clamped to [0, 1] after each step.
        tv: weight of the anisotropic total variation ``mean |dx| + mean |dy|`` (>= 0).
        l2: weight of ``mean((x - mean_face)^2)``, the pull towards the public mean face (>= 0).
        init_noise: std of the Gaussian noise added to the mean face at the start (>= 0; 0: every
            restart starts at the mean face and, the attack being deterministic, ends the same).
        seeds: restarts per identity (>= 1); each gives one reconstruction.

    Scale of the weights: both priors are per-pixel means, so their gradient on one pixel is about
    ``2 * tv / (C * H * W)`` and ``2 * l2 * |x - mean| / (C * H * W)``, against a cross-entropy
    gradient of order 1e-2 per pixel on veil's small CNN at 32 px; below tv ~ 1 the TV prior
    barely changes the result (measured there: tv 0 and 0.3 gave the same target confidence to 3 digits).
    """

    steps: int = 200
    lr: float = 0.02
    tv: float = 5.0
    l2: float = 5.0
    init_noise: float = 0.05
    seeds: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.seeds < 1:
            raise ValueError(f"steps and seeds must be >= 1, got steps={self.steps}, seeds={self.seeds}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.tv < 0 or self.l2 < 0 or self.init_noise < 0:
            raise ValueError(f"tv, l2 and init_noise must be >= 0, got tv={self.tv}, l2={self.l2}, "
                             f"init_noise={self.init_noise}")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image anisotropic TV of (B, C, H, W): mean |horizontal diff| + mean |vertical diff|."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def mean_face(public_images: torch.Tensor) -> torch.Tensor:
    """The public split's mean image (1, C, H, W) in [0, 1]: the attacker's prior and start."""
    if len(public_images) == 0:
        raise ValueError("the white-box attack needs at least 1 public image for its mean face")
    x = public_images.float() / 255.0 if public_images.dtype == torch.uint8 else public_images.float()
    return x.mean(0, keepdim=True).clamp(0.0, 1.0)


def whitebox_attack(target: nn.Module, public_images: torch.Tensor, classes: torch.Tensor,
                    config: WhiteBoxConfig = WhiteBoxConfig(),
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct each class in ``classes`` ``config.seeds`` times by optimizing pixels.

    Returns images (len(classes) * seeds, C, H, W) in [0, 1], class-major, and their classes (the
    contract of ``pca_attack``). The target's parameters, their ``requires_grad`` flags and its
    train/eval mode are restored; it runs in eval mode during the attack.
    """
    was_training = target.training
    target.eval()
    device = module_device(target)  # the attack runs where the target is; noise is drawn on the CPU generator
    labels = classes.repeat_interleave(config.seeds).to(device)
    prior = mean_face(public_images).to(device)
    start = prior.expand(len(labels), *prior.shape[1:])
    if config.init_noise > 0:
        start = start + (config.init_noise * torch.randn(start.shape, generator=generator)).to(device)
    x = start.clamp(0.0, 1.0).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.lr)
    params = list(target.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(config.steps):
            logits = target(x)["logits"]
            # every term is a per-image mean, so restarts do not interact (Adam is per pixel)
            loss = (nn.functional.cross_entropy(logits, labels) + config.tv * total_variation(x).mean()
                    + config.l2 * (x - prior).square().mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        target.train(was_training)
    return x.detach(), labels
