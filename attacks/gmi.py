"""GMI, the generative model-inversion attack (Zhang, Jia, Pei, Wang, Li, Song, "The Secret
Revealer: Generative Model-Inversion Attacks Against Deep Neural Networks", CVPR 2020).

A WGAN-GP trained on the public split (``veil.attacks.gan.train_gan``) is the prior; for each target
class and restart the attack searches the latent ``z`` minimizing
``L_prior + lambda * L_id`` with ``L_prior = -D(G(z))`` (the critic's realism score) and
``L_id = CE(target(G(z)), class)``, clipping ``z`` to ``[-clip_z, clip_z]`` after each step as the
authors do. All classes and restarts are one batch; each row's loss depends only on its own
latent, and Adam's per-coordinate scaling keeps the rows independent of the batch size (the
paper uses SGD with momentum on a batch mean). ``lomma`` swaps in LOMMA's logit loss and
surrogate models (``veil.attacks.lomma``).

Departures from the authors' code (each with its source line in ``docs/attacks-peer-check.md``):
Adam instead of SGD with momentum 0.9; 300 steps by default instead of 1500; the first latents
are clipped too; a DCGAN prior about 1/4 as wide, trained with Adam 1e-3, betas (0.5, 0.9), 2
critic updates per generator update and the penalty every 2nd one, for hundreds instead of tens
of thousands of generator updates. Restarts are judged one by one (the KEDMI/PLG-MI protocol), not
by GMI's best-of-5 by target confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from veil.recognition.device import module_device

from .gan import GANBundle, frozen
from .lomma import IDENTITY_LOSSES, LOMMAConfig, LOMMAKit, identity_loss, prepare_lomma


@dataclass(frozen=True)
class GMIConfig:
    """Args:
        steps: Adam steps on the latents (>= 1; the paper runs 1500).
        lr: Adam learning rate (> 0).
        lambda_id: weight of the identity loss against the prior (>= 0; the paper's 100).
        seeds: random restarts per class (>= 1); each gives one reconstruction.
        clip_z: clip the latents to ``[-clip_z, clip_z]`` after each step (``None``: no clipping).
        identity_loss: ``ce`` (the paper), ``max_margin`` or ``logit`` (ignored when ``lomma`` is set).
        lomma: LOMMA's logit loss and model augmentation (``None``: off).
    """

    steps: int = 300
    lr: float = 0.02
    lambda_id: float = 100.0
    seeds: int = 5
    clip_z: float | None = 1.0
    identity_loss: str = "ce"
    lomma: LOMMAConfig | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.seeds < 1:
            raise ValueError(f"steps and seeds must be >= 1, got steps={self.steps}, seeds={self.seeds}")
        if self.lr <= 0 or self.lambda_id < 0:
            raise ValueError(f"lr must be > 0 and lambda_id >= 0, got lr={self.lr}, lambda_id={self.lambda_id}")
        if self.clip_z is not None and self.clip_z <= 0:
            raise ValueError(f"clip_z must be > 0 or None, got {self.clip_z}")
        if self.identity_loss not in IDENTITY_LOSSES:
            raise ValueError(f"identity_loss must be one of {IDENTITY_LOSSES}, got {self.identity_loss!r}")


def lomma_kit(target: nn.Module, config: LOMMAConfig | None, public_images: torch.Tensor | None,
              progress: bool = True) -> LOMMAKit | None:
    """The LOMMA kit an attack needs when its config asks for LOMMA (``None`` otherwise)."""
    if config is None:
        return None
    if public_images is None:
        raise ValueError("LOMMA needs the public images (public_images=...) to distill surrogates and set p_reg")
    return prepare_lomma(target, public_images, config, progress=progress)


def gmi_attack(target: nn.Module, gan: GANBundle, classes: torch.Tensor, config: GMIConfig = GMIConfig(),
               generator: torch.Generator | None = None, public_images: torch.Tensor | None = None,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct each class in ``classes`` ``config.seeds`` times through the GAN prior.

    Returns images (len(classes) * seeds, C, H, W) in [0, 1], class-major, and their classes.
    The target's parameters, ``requires_grad`` flags and train mode are left as they were.
    ``public_images`` is needed only with ``config.lomma``.
    """
    kit = lomma_kit(target, config.lomma, public_images, progress)
    device = module_device(target)  # the GAN joins the target there; the latents are drawn on the CPU
    labels = classes.repeat_interleave(config.seeds).to(device)
    z = torch.randn(len(labels), gan.latent_dim, generator=generator).to(device)
    if config.clip_z is not None:
        z = z.clamp(-config.clip_z, config.clip_z)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=config.lr)
    G, D = gan.generator.to(device), gan.discriminator.to(device)
    with frozen(target, G, D):
        for _ in range(config.steps):
            x = G(z)
            prior = -D(x)[0].squeeze(1)
            loss = prior + config.lambda_id * identity_loss(target, x, labels, config.identity_loss, kit)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            if config.clip_z is not None:
                with torch.no_grad():
                    z.clamp_(-config.clip_z, config.clip_z)
        with torch.no_grad():
            return G(z), labels
