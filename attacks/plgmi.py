"""PLG-MI, the pseudo-label-guided model-inversion attack (Yuan, Chen, Zhang, Gong, Liu, Ma,
"Pseudo Label-Guided Model Inversion Attack via Conditional Generative Adversarial Network",
AAAI 2023).

1. *Top-n selection*: the target scores every public image; for each class ``k`` the ``top_n``
   images with the highest ``p_k`` become that class's pseudo-labelled data (an image may serve
   several classes), which splits the public faces into the target's identities.
2. A conditional GAN on them: class-conditional generator (conditional BatchNorm), projection
   discriminator with spectral normalization, hinge loss; the generator also lowers
   ``alpha *`` the target's max-margin loss on augmented samples of the requested class.
3. Inversion: for each class and restart, ``z`` is optimized by Adam so that the target's
   max-margin loss ``-logit_y + max_{k != y} logit_k`` of two augmented views of ``G(z, y)`` falls
   (random resized crop, brightness/contrast jitter, flip, small rotation; batched affine warps
   here instead of kornia). No discriminator term: the conditional generator is the prior.

Departures from the authors' code (each with its source line in ``docs/attacks-peer-check.md``):
DCGAN-sized networks (a conditional-BatchNorm DCGAN generator and a strided-conv projection
discriminator, width 16) instead of the authors' SNGAN ResNets (width 64); Adam 1e-3 and betas
(0.5, 0.9) instead of 2e-4 and (0.0, 0.9), 2 discriminator updates per generator update instead of
5, hundreds instead of 30,000 generator updates; a 100-d latent instead of 128; colour jitter on
every sample in GAN training too (the authors: half of them); 300 inversion steps instead of 600.
``top_n = 30`` is the authors' value for 1000 classes and tens of thousands of public images; with
few public images per class the pseudo-labelled sets overlap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from veil.recognition.device import module_device, to_device

from .cache import cache_key, model_fingerprint, tensor_fingerprint
from .gan import (
    Discriminator,
    GANBundle,
    GANConfig,
    GANRecipe,
    Generator,
    check_images,
    frozen,
    latents,
    sample_batch,
    to_unit,
    train_recipe,
)
from .gmi import lomma_kit
from .lomma import IDENTITY_LOSSES, LOMMAConfig, identity_loss, max_margin_loss


def augment(x: torch.Tensor, g: torch.Generator | None = None, scale: tuple[float, float] = (0.8, 1.0),
            jitter: float = 0.2, degrees: float = 5.0) -> torch.Tensor:
    """PLG-MI's inversion augmentations, batched: random resized crop (area ``scale``, square),
    brightness and contrast jitter of +-``jitter``, horizontal flip, rotation of +-``degrees``.
    Drawn by ``g`` on the CPU, applied on ``x``'s device."""
    b = len(x)
    u = torch.rand(b, 6, generator=g).to(x.device)
    side = (scale[0] + (scale[1] - scale[0]) * u[:, 0]).sqrt()  # crop side as a fraction of the image
    tx, ty = (2 * u[:, 1] - 1) * (1 - side), (2 * u[:, 2] - 1) * (1 - side)
    angle = (2 * u[:, 3] - 1) * math.radians(degrees)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = angle.cos() * side, angle.sin() * side
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    j = ((2 * torch.rand(b, 2, 1, 1, 1, generator=g) - 1) * jitter).to(x.device)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out * (1 + j[:, 0]) - mean) * (1 + j[:, 1]) + mean
    return out.clamp(0.0, 1.0)


@torch.no_grad()
def pseudo_label(target: nn.Module, public_images: torch.Tensor, top_n: int,
                 batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n selection: indices into ``public_images`` and their pseudo-labels, the ``top_n``
    most confident images of each of the target's classes (class-major), on the CPU."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    device = module_device(target)
    with frozen(target):
        probs = torch.cat([target(to_unit(to_device(public_images[i:i + batch], device)))["logits"].softmax(1)
                           for i in range(0, len(public_images), batch)])
    n = min(top_n, len(public_images))
    idx = probs.topk(n, dim=0).indices.T.cpu()  # (K, n)
    labels = torch.arange(probs.shape[1]).repeat_interleave(n)
    return idx.reshape(-1), labels


@dataclass
class PLGMIRecipe(GANRecipe):
    """PLG-MI's conditional GAN on the pseudo-labelled public images: class-conditional generator,
    projection discriminator with spectral normalization, hinge loss, and ``alpha`` x the target's
    max-margin loss on augmented samples of the requested class (``target`` frozen by the caller)."""

    kind: ClassVar[str] = "plgmi"
    title: ClassVar[str] = "PLG-MI cGAN"
    images: torch.Tensor  # the selected public images
    labels: torch.Tensor  # their pseudo-labels
    num_classes: int
    target: nn.Module
    alpha: float

    def networks(self, channels: int, size: int, config: GANConfig) -> tuple[Generator, Discriminator]:
        k = self.num_classes
        return (Generator(config.latent_dim, channels, size, config.width, num_classes=k),
                Discriminator(channels, size, config.width, outputs=1, num_classes=k, norm="none", spectral=True))

    def critic_loss(self, gen: Generator, disc: Discriminator, config: GANConfig, g: torch.Generator,
                    update: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the projection discriminator: real images with their pseudo-labels against
        samples of random classes."""
        device = module_device(gen)
        x, idx, _ = sample_batch(self.images, config.batch_size, g, device)
        y_fake = torch.randint(self.num_classes, (config.batch_size,), generator=g).to(device)
        with torch.no_grad():
            fake = gen(latents(config, g, device), y_fake)
        loss_d = (F.relu(1 - disc(x, self.labels[idx].to(device))[0]).mean()
                  + F.relu(1 + disc(fake, y_fake)[0]).mean())
        return loss_d, {"d_hinge": loss_d.detach()}

    def generator_loss(self, gen: Generator, disc: Discriminator, config: GANConfig,
                       g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge + ``alpha`` x the target's max-margin loss on augmented samples of random classes."""
        device = module_device(gen)
        y = torch.randint(self.num_classes, (config.batch_size,), generator=g).to(device)
        fake = gen(latents(config, g, device), y)
        loss_adv = -disc(fake, y)[0].mean()
        loss_inv = (max_margin_loss(self.target(augment(fake, g))["logits"], y).mean() if self.alpha
                    else torch.zeros((), device=device))
        return loss_adv + self.alpha * loss_inv, {"g_adv": loss_adv.detach(), "g_inv": loss_inv.detach()}


def train_plgmi_gan(target: nn.Module, public_images: torch.Tensor, config: GANConfig = GANConfig(),
                    cache: bool = True, source: str = "", top_n: int = 30, alpha: float = 0.2,
                    progress: bool = True) -> GANBundle:
    """Pseudo-label the public images with ``target`` (top-n per class) and train (or read from
    the cache) PLG-MI's conditional GAN on them; cached by the target's weights, the images'
    content, ``config``, ``top_n`` and ``alpha``. ``config.gp_weight`` is not used (hinge loss,
    spectral normalization). ``extra['pseudo_index']`` holds the selected public images."""
    check_images(public_images)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    idx, labels = pseudo_label(target, public_images, top_n)
    recipe = PLGMIRecipe(public_images[idx], labels, int(labels.max()) + 1, target, alpha)
    key = cache_key("plgmi", source, model_fingerprint(target), tensor_fingerprint(public_images), asdict(config),
                    top_n, alpha)
    with frozen(target):
        return train_recipe(recipe, public_images, config, key, cache, progress,
                            extra={"pseudo_index": idx, "pseudo_labels": labels}, device=module_device(target))


@dataclass(frozen=True)
class PLGMIConfig:
    """Args:
        steps: Adam steps on the latents (>= 1; the authors run 600).
        lr: Adam learning rate (> 0; the authors' 0.1).
        seeds: random restarts per class (>= 1); each gives one reconstruction.
        views: augmented views per step whose losses are summed (>= 1; the authors' 2).
        augment: apply the augmentations (False: the loss reads ``G(z, y)`` itself, once).
        identity_loss: ``max_margin`` (the paper), ``ce`` or ``logit`` (ignored with ``lomma``).
        lomma: LOMMA's logit loss and model augmentation (``None``: off).
    """

    steps: int = 300
    lr: float = 0.1
    seeds: int = 5
    views: int = 2
    augment: bool = True
    identity_loss: str = "max_margin"
    lomma: LOMMAConfig | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.seeds < 1 or self.views < 1:
            raise ValueError(f"steps, seeds and views must be >= 1, got {self.steps}, {self.seeds}, {self.views}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.identity_loss not in IDENTITY_LOSSES:
            raise ValueError(f"identity_loss must be one of {IDENTITY_LOSSES}, got {self.identity_loss!r}")


def plgmi_attack(target: nn.Module, gan: GANBundle, classes: torch.Tensor, config: PLGMIConfig = PLGMIConfig(),
                 generator: torch.Generator | None = None, public_images: torch.Tensor | None = None,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct each class in ``classes`` ``config.seeds`` times with the conditional GAN.

    Returns images (len(classes) * seeds, C, H, W) in [0, 1], class-major, and their classes.
    The target is left as it was; ``public_images`` is needed only with ``config.lomma``.
    """
    if gan.kind != "plgmi":
        raise ValueError(f"PLG-MI needs its conditional GAN (train_plgmi_gan), got a {gan.kind!r} GAN")
    kit = lomma_kit(target, config.lomma, public_images, progress)
    device = module_device(target)  # the GAN joins the target there; the latents are drawn on the CPU
    labels = classes.repeat_interleave(config.seeds).to(device)
    z = torch.randn(len(labels), gan.latent_dim, generator=generator).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=config.lr)
    G = gan.generator.to(device)
    views = config.views if config.augment else 1
    with frozen(target, G):
        for _ in range(config.steps):
            x = G(z, labels)
            xs = torch.cat([augment(x, generator) for _ in range(views)]) if config.augment else x
            loss = identity_loss(target, xs, labels.repeat(views), config.identity_loss, kit)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            return G(z, labels), labels
