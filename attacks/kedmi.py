"""KEDMI, the knowledge-enriched distributional model-inversion attack (Chen, Kahla, Jia, Jia,
"Knowledge-Enriched Distributional Model Inversion Attacks", ICCV 2021).

Two changes over GMI:

* an *inversion-specific GAN*: the discriminator has K outputs, the target's K classes, and an
  implicit (K+1)-th 'fake' class (Salimans et al. 2016: ``P(real | x) = sigmoid(logsumexp(D(x)))``).
  It learns the target's soft labels on the public images (``softXEnt``) while telling real from
  fake; the generator matches the mean discriminator features of real public images and lowers
  the entropy of ``D``'s class prediction on its samples, so it produces class-specific faces of
  the kind the target knows (the authors' code: feature matching + 1e-4 x entropy summed over the
  batch). It depends on the target, so it is trained (and cached) per target.
* a *distributional* search: per class a Gaussian ``N(mu, diag(sigma^2))`` in latent space is
  learned through reparameterized samples, minimizing
  ``L_prior + lambda * L_id`` with ``L_prior = softplus(lse) - lse = -log P(real)`` (``lse`` the
  logsumexp of ``D``'s outputs) and ``L_id`` the target's cross-entropy; the reconstructions are
  samples of the learned distribution.

Departures from the authors' code (each with its source line in ``docs/attacks-peer-check.md``):
no minibatch discrimination in the discriminator, and DCGAN networks about 1/4 as wide; one
discriminator update per generator update instead of 5, Adam 1e-3 and betas (0.5, 0.9) instead of
2e-4 and (0.5, 0.999), hundreds instead of tens of thousands of updates; one real batch for the
labelled and the unlabelled term instead of two; the latent Gaussians start at
``log sigma^2 = 0`` where the authors start at 1; 4 samples per class and step instead of 1; 300
inversion steps instead of 1500-2400.
"""

from __future__ import annotations

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
from .lomma import IDENTITY_LOSSES, LOMMAConfig, identity_loss


@torch.no_grad()
def soft_labels(target: nn.Module, public_images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's softmax on every public image and on its mirror image: ((N, K), (N, K)), on
    the target's device."""
    device = module_device(target)
    with frozen(target):
        p, pf = [], []
        for i in range(0, len(public_images), batch):
            x = to_unit(to_device(public_images[i:i + batch], device))
            p.append(target(x)["logits"].softmax(1))
            pf.append(target(x.flip(-1))["logits"].softmax(1))
    return torch.cat(p), torch.cat(pf)


@dataclass
class KEDMIRecipe(GANRecipe):
    """KEDMI's inversion-specific GAN: a K-output discriminator learns the target's soft labels
    ``probs`` (of each public image and of its mirror image) while telling real from fake; the
    generator matches real features and lowers the entropy of the discriminator's class guess."""

    kind: ClassVar[str] = "kedmi"
    title: ClassVar[str] = "KEDMI GAN"
    images: torch.Tensor
    probs: tuple[torch.Tensor, torch.Tensor]
    entropy_weight: float

    def networks(self, channels: int, size: int, config: GANConfig) -> tuple[Generator, Discriminator]:
        return (Generator(config.latent_dim, channels, size, config.width),
                Discriminator(channels, size, config.width, outputs=self.probs[0].shape[1], norm="instance"))

    def critic_loss(self, gen: Generator, disc: Discriminator, config: GANConfig, g: torch.Generator,
                    update: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Soft-label cross-entropy on real images + the real/fake loss of the implicit fake class."""
        device = module_device(gen)
        x, idx, flip = sample_batch(self.images, config.batch_size, g, device)
        idx = idx.to(self.probs[0].device)
        p = torch.where(flip[:, None], self.probs[1][idx], self.probs[0][idx])
        with torch.no_grad():
            fake = gen(latents(config, g, device))
        out_real = disc(x)[0]
        out_fake = disc(fake)[0]
        loss_lab = -(p * F.log_softmax(out_real, 1)).sum(1).mean()
        lse_r, lse_f = out_real.logsumexp(1), out_fake.logsumexp(1)
        loss_unlab = 0.5 * ((F.softplus(lse_r) - lse_r).mean() + F.softplus(lse_f).mean())
        return loss_lab + loss_unlab, {"d_lab": loss_lab.detach(), "d_unlab": loss_unlab.detach()}

    def generator_loss(self, gen: Generator, disc: Discriminator, config: GANConfig,
                       g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Feature matching against a real batch + ``entropy_weight`` x the summed entropy."""
        device = module_device(gen)
        x, _, _ = sample_batch(self.images, config.batch_size, g, device)
        out_fake, feat_fake = disc(gen(latents(config, g, device)))
        with torch.no_grad():
            feat_real = disc(x)[1]
        loss_feat = (feat_fake.mean(0) - feat_real.mean(0)).abs().mean()
        entropy = -(out_fake.softmax(1) * out_fake.log_softmax(1)).sum()
        return loss_feat + self.entropy_weight * entropy, {"g_feat": loss_feat.detach()}


def train_kedmi_gan(target: nn.Module, public_images: torch.Tensor, config: GANConfig = GANConfig(n_critic=1),
                    cache: bool = True, source: str = "", entropy_weight: float = 1e-4,
                    progress: bool = True) -> GANBundle:
    """Train (or read from the cache) KEDMI's inversion-specific GAN for ``target`` on the public
    images; cached by the target's weights, the images' content, ``config`` and ``entropy_weight``.
    ``config.gp_weight`` is not used (KEDMI's discriminator is a classifier, not a critic)."""
    check_images(public_images)
    if entropy_weight < 0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
    probs = soft_labels(target, public_images)
    key = cache_key("kedmi", source, model_fingerprint(target), tensor_fingerprint(public_images), asdict(config),
                    entropy_weight)
    return train_recipe(KEDMIRecipe(public_images, probs, entropy_weight), public_images, config, key, cache, progress,
                        device=module_device(target))


@dataclass(frozen=True)
class KEDMIConfig:
    """Args:
        steps: Adam steps on each class's ``(mu, log_var)`` (>= 1; the authors run 1500-3000).
        lr: Adam learning rate (> 0; the authors' 0.02).
        lambda_id: weight of the identity loss (>= 0; the authors' 100).
        samples_per_step: reparameterized samples per class per step (>= 1).
        seeds: reconstructions sampled from each learned distribution at the end (>= 1).
        init_log_var: initial ``log sigma^2`` of every distribution (0: the GAN's own prior; the
            authors' code starts at 1).
        identity_loss: ``ce`` (the paper), ``max_margin`` or ``logit`` (ignored with ``lomma``).
        lomma: LOMMA's logit loss and model augmentation (``None``: off).
    """

    steps: int = 300
    lr: float = 0.02
    lambda_id: float = 100.0
    samples_per_step: int = 4
    seeds: int = 5
    init_log_var: float = 0.0
    identity_loss: str = "ce"
    lomma: LOMMAConfig | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.seeds < 1 or self.samples_per_step < 1:
            raise ValueError(f"steps, seeds and samples_per_step must be >= 1, got {self.steps}, {self.seeds}, "
                             f"{self.samples_per_step}")
        if self.lr <= 0 or self.lambda_id < 0:
            raise ValueError(f"lr must be > 0 and lambda_id >= 0, got lr={self.lr}, lambda_id={self.lambda_id}")
        if self.identity_loss not in IDENTITY_LOSSES:
            raise ValueError(f"identity_loss must be one of {IDENTITY_LOSSES}, got {self.identity_loss!r}")


def kedmi_prior_loss(scores: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-log P(real | x) = softplus(lse) - lse`` of (B, K) discriminator outputs."""
    lse = scores.logsumexp(1)
    return F.softplus(lse) - lse


def kedmi_attack(target: nn.Module, gan: GANBundle, classes: torch.Tensor, config: KEDMIConfig = KEDMIConfig(),
                 generator: torch.Generator | None = None, public_images: torch.Tensor | None = None,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn a latent Gaussian per class in ``classes`` and sample ``config.seeds`` reconstructions
    from each: images (len(classes) * seeds, C, H, W) in [0, 1], class-major, and their classes.
    The target is left as it was; ``public_images`` is needed only with ``config.lomma``."""
    if gan.kind != "kedmi":
        raise ValueError(f"KEDMI needs its inversion-specific GAN (train_kedmi_gan), got a {gan.kind!r} GAN")
    kit = lomma_kit(target, config.lomma, public_images, progress)
    device = module_device(target)  # the GAN joins the target there; the noise is drawn on the CPU
    n, d, m = len(classes), gan.latent_dim, config.samples_per_step
    mu = torch.zeros(n, d, device=device, requires_grad=True)
    log_var = torch.full((n, d), config.init_log_var, device=device, requires_grad=True)
    opt = torch.optim.Adam([mu, log_var], lr=config.lr)
    labels_step = classes.repeat_interleave(m).to(device)
    G, D = gan.generator.to(device), gan.discriminator.to(device)
    with frozen(target, G, D):
        for _ in range(config.steps):
            eps = torch.randn(n, m, d, generator=generator).to(device)
            z = (mu[:, None] + eps * (0.5 * log_var[:, None]).exp()).reshape(n * m, d)
            x = G(z)
            loss = kedmi_prior_loss(D(x)[0]) + config.lambda_id * identity_loss(
                target, x, labels_step, config.identity_loss, kit)
            opt.zero_grad(set_to_none=True)
            (loss.sum() / m).backward()
            opt.step()
        with torch.no_grad():
            eps = torch.randn(n, config.seeds, d, generator=generator).to(device)
            z = (mu[:, None] + eps * (0.5 * log_var[:, None]).exp()).reshape(n * config.seeds, d)
            return G(z), classes.repeat_interleave(config.seeds).to(device)
