"""GAN priors for model inversion: a DCGAN-style generator and discriminator, the training scaffold
every GAN attack shares (``GANRecipe`` + ``train_recipe``: Adam, critic and generator updates,
time cap, cache, bookkeeping) with GMI's WGAN-GP as its first recipe, and the helpers of the GAN
attacks (time-capped loop, frozen-model context, seeded construction, batches). The cache itself
is ``veil.attacks.cache``.

GMI (Zhang et al., "The Secret Revealer: Generative Model-Inversion Attacks Against Deep Neural
Networks", CVPR 2020) trains this GAN on public faces with the Wasserstein loss and gradient
penalty (Gulrajani et al. 2017) and then searches its latent space (``veil.attacks.gmi``). KEDMI and
PLG-MI (``veil.attacks.kedmi``, ``veil.attacks.plgmi``) are recipes of the same scaffold: the same networks
with other heads, other losses and (PLG-MI) class-conditional labels.

Networks work for square images of 16, 32, 64, 128 ... px and 1 or 3 channels; the generator maps
``z ~ N(0, I)`` to images in [0, 1] (a sigmoid output, the range every veil model takes). They are
built (seeded) on the CPU and moved to the training device; batches and latents are drawn by the
CPU generator and moved there, so a seed gives the same networks on every device.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from veil.recognition.device import module_device, to_device
from veil.recognition.progress import progress_bar

from .cache import cache_key, load_cached, save_cached, tensor_fingerprint

# ----------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class GANConfig:
    """How a GAN prior is built and trained. The defaults are tuned for a CPU budget of minutes
    (AT&T, 64 px, 2 cores: about 0.43 s per generator update, face-like samples after ~400 updates);
    the GMI paper's GPU settings are closer to ``width=64, batch_size=64, lr=2e-4, n_critic=5,
    gp_every=1`` and tens of thousands of updates.

    Args:
        latent_dim: size of ``z`` (>= 1; GMI uses 100).
        width: channel multiplier of both networks (>= 4); the deepest layer has ``width * 2^(n-1)``
            channels for ``n = log2(size / 4)`` up/down-sampling stages.
        steps: generator updates (>= 1); training ends earlier at ``max_seconds``.
        batch_size: images per update (>= 2).
        lr: Adam learning rate of both networks (> 0).
        betas: Adam betas (WGAN-GP's (0.5, 0.9) by default).
        n_critic: discriminator updates per generator update (>= 1).
        gp_weight: weight of the gradient penalty (>= 0; WGAN-GP uses 10). Only the WGAN-GP
            (GMI) trainer reads it.
        gp_every: compute the penalty on every ``gp_every``-th critic update only, scaled by
            ``gp_every`` (lazy regularization, Karras et al. 2020; >= 1, 1 = exact WGAN-GP). The
            penalty's double backward is most of a critic update's cost on CPU.
        max_seconds: wall-clock cap on training (``None``: no cap); at least one update runs.
        seed: seeds the networks' initialization, batches and latents.
    """

    latent_dim: int = 100
    width: int = 16
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    n_critic: int = 2
    gp_weight: float = 10.0
    gp_every: int = 2
    max_seconds: float | None = 180.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.width < 4:
            raise ValueError(f"width must be >= 4, got {self.width}")
        if self.steps < 1 or self.n_critic < 1 or self.gp_every < 1:
            raise ValueError(f"steps, n_critic and gp_every must be >= 1, got steps={self.steps}, "
                             f"n_critic={self.n_critic}, gp_every={self.gp_every}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {self.gp_weight}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")


def _stages(image_size: int) -> int:
    """Number of 2x up/down-sampling stages between 4x4 and ``image_size`` (a power of two >= 16)."""
    n = int(round(math.log2(image_size))) - 2
    if image_size < 16 or 2 ** (n + 2) != image_size:
        raise ValueError(f"image_size must be a power of two >= 16 (e.g. 32 or 64), got {image_size}")
    return n


# ----------------------------------------------------------------------------------- networks

class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose affine gain and bias are looked up per class (PLG-MI's conditional
    generator); with ``num_classes == 0`` it is a plain affine BatchNorm."""

    def __init__(self, channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if not self.num_classes:
            return h
        if y is None:
            raise ValueError("a class-conditional BatchNorm needs labels y")
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """DCGAN generator (as GMI's): ``z`` (B, latent) -> linear to a 4x4 map -> transposed-conv
    stages with BatchNorm and ReLU -> sigmoid image (B, C, S, S) in [0, 1]. With
    ``num_classes > 0`` its BatchNorms are class-conditional and ``forward`` takes labels."""

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, width: int = 32,
                 num_classes: int = 0) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        n = _stages(image_size)
        self.latent_dim, self.channels, self.image_size, self.num_classes = latent_dim, channels, image_size, num_classes
        c = width * 2 ** (n - 1)
        self.c0 = c
        self.fc = nn.Linear(latent_dim, c * 16, bias=False)
        self.bn0 = ConditionalBatchNorm2d(c, num_classes)
        self.ups = nn.ModuleList()
        self.bns = nn.ModuleList()
        for _ in range(n - 1):
            self.ups.append(nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False))
            self.bns.append(ConditionalBatchNorm2d(c // 2, num_classes))
            c //= 2
        self.out = nn.ConvTranspose2d(c, channels, 4, 2, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.bn0(self.fc(z).view(len(z), self.c0, 4, 4), y))
        for up, bn in zip(self.ups, self.bns):
            h = F.relu(bn(up(h), y))
        return torch.sigmoid(self.out(h))


class Discriminator(nn.Module):
    """DCGAN discriminator: strided convs with LeakyReLU (InstanceNorm after the first, as GMI's
    WGAN-GP critic, which must not use BatchNorm) down to a 4x4 map whose flattening is the
    feature vector, then a linear head with ``outputs`` scores.

    ``forward(x, y=None) -> (scores (B, outputs), features (B, F))``. With ``num_classes > 0`` a
    projection term ``<embed(y), features>`` is added to every score (Miyato and Koyama 2018, the
    PLG-MI discriminator); ``spectral`` wraps every layer in spectral normalization.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 32, outputs: int = 1,
                 num_classes: int = 0, norm: str = "instance", spectral: bool = False) -> None:
        super().__init__()
        if norm not in ("instance", "none"):
            raise ValueError(f"norm must be 'instance' or 'none', got {norm!r}")
        if outputs < 1:
            raise ValueError(f"outputs must be >= 1, got {outputs}")
        n = _stages(image_size)
        sn: Callable[[nn.Module], nn.Module] = (nn.utils.parametrizations.spectral_norm if spectral
                                                else (lambda m: m))
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(n - 1):
            layers.append(sn(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=norm == "none")))
            if norm == "instance":
                layers.append(nn.InstanceNorm2d(2 * c, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            c *= 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = c * 16
        self.head = sn(nn.Linear(self.feature_dim, outputs))
        self.num_classes = num_classes
        self.embed = sn(nn.Embedding(num_classes, self.feature_dim)) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x * 2.0 - 1.0).flatten(1)
        out = self.head(h)
        if self.embed is not None:
            if y is None:
                raise ValueError("a projection discriminator needs labels y")
            out = out + (self.embed(y) * h).sum(1, keepdim=True)
        return out, h


@dataclass
class GANBundle:
    """A trained GAN prior: the networks (eval mode, frozen), how it was made and how long it took.

    ``kind`` is ``gmi``, ``kedmi`` or ``plgmi``; ``steps_done`` counts generator updates (fewer
    than ``config.steps`` when the time cap stopped training); ``from_cache`` tells whether it
    was read from disk; ``extra`` holds method-specific tensors (e.g. PLG-MI's pseudo-label counts).
    """

    generator: Generator
    discriminator: Discriminator
    config: GANConfig
    kind: str
    steps_done: int
    seconds: float
    from_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_dim(self) -> int:
        """Size of the generator's latent ``z``."""
        return self.generator.latent_dim


# ----------------------------------------------------------------------------------- helpers

def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float images -> float32 in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@contextlib.contextmanager
def frozen(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode with ``requires_grad=False`` for the block and restore each
    parameter's flag and each model's train mode afterwards (even on error)."""
    state = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in models]
    for m in models:
        m.eval()
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, was, flags in state:
            for p, f in flags:
                p.requires_grad_(f)
            m.train(was)


def run_loop(steps: int, max_seconds: float | None, desc: str, step: Callable[[int], dict[str, float]],
             progress: bool = True) -> tuple[int, float]:
    """Call ``step(i)`` for ``i < steps`` under a tqdm bar until ``max_seconds`` have passed
    (checked before each step; at least one runs). Returns (steps done, seconds). ``step``'s stats
    may be 0-dim tensors: they are read (a host sync) only when the bar shows them, every 10 steps."""
    t0 = time.perf_counter()
    done = 0
    with progress_bar(total=steps, desc=desc, unit="step", enabled=progress, leave=False) as bar:
        for i in range(steps):
            if i and max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                break
            stats = step(i)
            done += 1
            bar.update(1)
            if stats and (i % 10 == 0 or i == steps - 1):
                bar.set_postfix({k: f"{float(v):.3g}" for k, v in stats.items()}, refresh=False)
    return done, time.perf_counter() - t0


def sample_batch(images: torch.Tensor, batch_size: int, g: torch.Generator,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random batch of public images in [0, 1] on ``device`` (default: the images'), each flipped
    left-right with probability 1/2: (images, their indices into ``images`` (CPU), which were flipped
    (on ``device``)), so per-image labels can follow. Drawn by ``g`` on the CPU."""
    idx = torch.randint(len(images), (batch_size,), generator=g)
    x = to_unit(images[idx] if device is None else to_device(images[idx], device))
    flip = (torch.rand(batch_size, generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x), idx, flip


def latents(config: GANConfig, g: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """A batch of generator inputs ``z ~ N(0, I)``: (batch_size, latent_dim), drawn by ``g`` on
    the CPU and moved to ``device``."""
    z = torch.randn(config.batch_size, config.latent_dim, generator=g)
    return z if device is None else z.to(device)


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """Call ``build()`` (network construction) under ``torch.manual_seed(seed)`` without
    disturbing the caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def check_images(images: torch.Tensor) -> None:
    """Raise a clear error unless ``images`` is a (N, C, S, S) batch of at least 2 images."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2] or len(images) < 2:
        raise ValueError(f"public images must be (N >= 2, C, S, S), got {tuple(images.shape)}")


# ----------------------------------------------------------------------------------- the training scaffold

class GANRecipe(ABC):
    """What one GAN attack puts into the shared training loop (``train_recipe``): its networks,
    its critic's loss and its generator's loss, each drawing its own batches and labels from the
    loop's random generator. Everything else is the loop's."""

    kind: ClassVar[str]  # gmi, kedmi or plgmi: the bundle's kind; its cache files are gan-<kind>-<key>.pt
    title: ClassVar[str]  # the progress bar's label

    @abstractmethod
    def networks(self, channels: int, size: int, config: GANConfig) -> tuple[Generator, Discriminator]:
        """Fresh generator and discriminator for (channels, size) images (built seeded)."""

    @abstractmethod
    def critic_loss(self, gen: Generator, disc: Discriminator, config: GANConfig, g: torch.Generator,
                    update: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's loss at critic update ``update`` (counted over the run) and its stats."""

    @abstractmethod
    def generator_loss(self, gen: Generator, disc: Discriminator, config: GANConfig,
                       g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's loss (the discriminator is frozen meanwhile) and its stats."""


def bundle_blob(bundle: GANBundle) -> dict:
    """The state of a bundle as plain tensors and numbers (loadable with ``weights_only``)."""
    return {"generator": bundle.generator.state_dict(), "discriminator": bundle.discriminator.state_dict(),
            "steps_done": bundle.steps_done, "seconds": bundle.seconds, "extra": bundle.extra}


def finish(generator: Generator, discriminator: Discriminator, config: GANConfig, kind: str,
           steps_done: int, seconds: float, from_cache: bool = False, extra: dict | None = None) -> GANBundle:
    """Freeze both networks in eval mode and wrap them in a ``GANBundle``."""
    for m in (generator, discriminator):
        m.eval()
        m.requires_grad_(False)
    return GANBundle(generator, discriminator, config, kind, steps_done, seconds, from_cache, extra or {})


def restore(blob: dict, generator: Generator, discriminator: Discriminator, config: GANConfig,
            kind: str) -> GANBundle:
    """Load a cache blob into fresh networks and return the bundle (``from_cache=True``)."""
    generator.load_state_dict(blob["generator"])
    discriminator.load_state_dict(blob["discriminator"])
    return finish(generator, discriminator, config, kind, int(blob["steps_done"]), float(blob["seconds"]),
                  True, dict(blob.get("extra", {})))


def train_recipe(recipe: GANRecipe, public_images: torch.Tensor, config: GANConfig, key: str, cache: bool = True,
                 progress: bool = True, extra: dict[str, Any] | None = None,
                 device: torch.device | None = None) -> GANBundle:
    """Build ``recipe``'s networks for the public images' shape (seeded by ``config.seed``) and
    read them from the cache entry ``gan-<kind>-<key>``, or train them with Adam: up to
    ``config.steps`` generator updates, each after ``config.n_critic`` critic updates, stopped at
    ``config.max_seconds``; then freeze them (with ``extra``, e.g. pseudo-labels) and cache them.
    The networks live on ``device`` (default: the CPU); the recipe's batches follow them."""
    _, c, s, _ = public_images.shape
    gen, disc = seeded(config.seed, lambda: recipe.networks(c, s, config))
    if device is not None:
        gen, disc = gen.to(device), disc.to(device)
    prefix = f"gan-{recipe.kind}"
    if cache and (blob := load_cached(prefix, key)) is not None:
        return restore(blob, gen, disc, config, recipe.kind)
    opt_g = torch.optim.Adam(gen.parameters(), config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(disc.parameters(), config.lr, betas=config.betas)
    g = torch.Generator().manual_seed(config.seed)
    gen.train()
    disc.train()

    def step(i: int) -> dict[str, float]:
        stats: dict[str, float] = {}
        for j in range(config.n_critic):
            loss_d, critic_stats = recipe.critic_loss(gen, disc, config, g, i * config.n_critic + j)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            stats.update(critic_stats)
        disc.requires_grad_(False)
        loss_g, generator_stats = recipe.generator_loss(gen, disc, config, g)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        disc.requires_grad_(True)
        return {**stats, **generator_stats}

    done, secs = run_loop(config.steps, config.max_seconds, recipe.title, step, progress)
    bundle = finish(gen, disc, config, recipe.kind, done, secs, extra=extra)
    if cache:
        save_cached(prefix, key, bundle_blob(bundle))
    return bundle


# ----------------------------------------------------------------------------------- GMI's WGAN-GP

def gradient_penalty(discriminator: Discriminator, real: torch.Tensor, fake: torch.Tensor,
                     g: torch.Generator) -> torch.Tensor:
    """WGAN-GP: ``E[(||grad_x D(x_hat)|| - 1)^2]`` on random interpolates of real and fake."""
    a = torch.rand(len(real), 1, 1, 1, generator=g).to(real.device)
    x = (a * real + (1 - a) * fake).requires_grad_(True)
    score = discriminator(x)[0]
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square().mean()


@dataclass
class WGANGPRecipe(GANRecipe):
    """GMI's prior: an unconditional generator against a one-score critic (InstanceNorm) on the
    public images, Wasserstein loss with the gradient penalty every ``gp_every`` critic updates."""

    kind: ClassVar[str] = "gmi"
    title: ClassVar[str] = "GMI GAN (WGAN-GP)"
    images: torch.Tensor

    def networks(self, channels: int, size: int, config: GANConfig) -> tuple[Generator, Discriminator]:
        return (Generator(config.latent_dim, channels, size, config.width),
                Discriminator(channels, size, config.width, outputs=1, norm="instance"))

    def critic_loss(self, gen: Generator, disc: Discriminator, config: GANConfig, g: torch.Generator,
                    update: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = module_device(gen)
        real, _, _ = sample_batch(self.images, config.batch_size, g, device)
        with torch.no_grad():
            fake = gen(latents(config, g, device))
        wd = disc(real)[0].mean() - disc(fake)[0].mean()
        loss_d = -wd
        stats = {"w_dist": wd.detach()}  # read only when shown (run_loop): no host sync per step
        if update % config.gp_every == 0:  # lazy regularization, scaled by gp_every
            gp = gradient_penalty(disc, real, fake, g)
            loss_d = loss_d + config.gp_weight * config.gp_every * gp
            stats["gp"] = gp.detach()
        return loss_d, stats

    def generator_loss(self, gen: Generator, disc: Discriminator, config: GANConfig,
                       g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return -disc(gen(latents(config, g, module_device(gen))))[0].mean(), {}


def train_gan(public_images: torch.Tensor, config: GANConfig = GANConfig(), cache: bool = True,
              source: str = "", progress: bool = True, device: torch.device | None = None) -> GANBundle:
    """Train (or read from the cache) GMI's WGAN-GP prior on the public images (uint8 or [0, 1],
    (N, C, S, S)) on ``device`` (default: the CPU). The cache key hashes ``source``, the images'
    content and shape, and ``config`` (not the device)."""
    check_images(public_images)
    key = cache_key("gmi", source, tensor_fingerprint(public_images), asdict(config))
    return train_recipe(WGANGPRecipe(public_images), public_images, config, key, cache, progress, device=device)
