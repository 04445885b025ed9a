"""Frequency-domain MixUp: mix ``k`` images of a batch inside a frequency band.

Fourier transform (the generalization of the "hybrid masking" defense for FR, arXiv 2403.10558,
whose strategy network picks k in 2..6): with ``F = rfft2(x)``, a radial band mask ``M`` (low,
high or band-pass, radii as fractions of Nyquist so a policy carries across image sizes) and
Dirichlet weights ``w ~ Dir(alpha 1_k)``::

    F_mix = M * sum_i w_i F(x_{pi_i}) + (1 - M) * F(x),     x_mix = irfft2(F_mix)

with ``pi_1`` the identity (the sample itself). ``amplitude`` and ``phase`` modes mix only the
amplitude (keeping each sample's own phase) or only the phase. Block-DCT mode follows the
paper's masking lineage (PPFR-FD): 8x8 block DCT, optionally drop the DC and lowest channels, mix
the ``k`` spectra inside the band of DCT channels, invert.

Soft targets: with ``lambda_b`` the share of sample b's own spectral energy inside the band,
``y_b' = (1 - lambda_b) y_b + lambda_b sum_i w_i y_{pi_i(b)}``. ``k = 1`` or an empty band is
exactly the identity. ``label_follow`` scales ``lambda_b``: 1 (default) is the rule above, 0 keeps
each sample's own target, so the mixed band becomes noise the model must learn to ignore (it then
classifies from the band left unmixed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("complex", "amplitude", "phase", "dct")
BAND_KINDS = ("low", "high", "band")


def band_for(kind: str, radius: Sequence[float]) -> tuple[float, float]:
    """The (r_lo, r_hi) band mixed for a band ``kind`` and its radii (fractions of Nyquist): ``low``
    (0, r), ``high`` (r, inf), ``band`` (r_lo, r_hi); a wrong kind or count is a one-line ValueError."""
    radii = [float(r) for r in radius]
    if kind not in BAND_KINDS:
        raise ValueError(f"band kind must be one of {', '.join(BAND_KINDS)}, got {kind!r}")
    if kind == "band":
        if len(radii) != 2:
            raise ValueError(f"a band-pass band needs two radii (r_lo, r_hi), got {radii}")
        return radii[0], radii[1]
    if len(radii) != 1:
        raise ValueError(f"a {kind} band takes one radius, got {radii}")
    return (0.0, radii[0]) if kind == "low" else (radii[0], math.inf)


@dataclass(frozen=True)
class MixConfig:
    """Frequency-MixUp parameters.

    Args:
        k: images mixed per sample (1 = identity), <= batch size; 3 by default, as ``veil train-fr --mix-k``.
        alpha: Dirichlet concentration (small: one image dominates; large: even weights), > 0.
        band: (r_lo, r_hi) radial band mixed, as fractions of Nyquist; frequencies with
            r_lo <= r < r_hi are mixed (``band_for``: low (0, radius), high (radius, inf)).
        mode: ``complex``, ``amplitude`` or ``phase`` (Fourier), or ``dct`` (8x8 block DCT).
        drop_dc: DCT mode: zero the DC channel of every block (PPFR-FD's removal of the
            channels that carry most visual information).
        drop_lowest: DCT mode: also zero the channels with u + v <= this (0 = none).
        label_follow: how far the targets follow the mix, 0..1: the energy share ``lambda_b`` is
            scaled by it (1: targets mixed as the band's energy says; 0: each sample keeps its own).
        p: probability a sample is mixed at all, 0..1; the others keep their own image and target
            (so part of every batch stays clean, which buys accuracy back).

    Example:
        >>> rec = sample_mixup(labels_soft.shape[0], MixConfig(k=3, band=(0.0, 0.5)), generator)
        >>> mixed, soft = apply_mixup(images, soft_targets, rec)
    """

    k: int = 3
    alpha: float = 1.0
    band: tuple[float, float] = (0.0, 0.5)
    mode: str = "complex"
    drop_dc: bool = False
    drop_lowest: int = 0
    label_follow: float = 1.0
    p: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a positive number, got {self.alpha}")
        lo, hi = self.band
        if not 0.0 <= lo <= hi:
            raise ValueError(f"band must satisfy 0 <= r_lo <= r_hi, got {self.band}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.drop_lowest < 0:
            raise ValueError(f"drop_lowest must be >= 0, got {self.drop_lowest}")
        if not 0.0 <= self.label_follow <= 1.0:
            raise ValueError(f"label_follow must be in [0, 1], got {self.label_follow}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p (the probability a sample is mixed) must be in [0, 1], got {self.p}")

    @staticmethod
    def low(radius: float, **kw: object) -> "MixConfig":
        """Mix the band r < radius."""
        return MixConfig(band=band_for("low", [radius]), **kw)  # type: ignore[arg-type]

    @staticmethod
    def high(radius: float, **kw: object) -> "MixConfig":
        """Mix the band r >= radius."""
        return MixConfig(band=band_for("high", [radius]), **kw)  # type: ignore[arg-type]


@dataclass
class MixRecord:
    """What was drawn for a batch: partner indices ``perm`` (B, k) with ``perm[:, 0]`` the
    sample itself, Dirichlet weights (B, k), and the config that says where and how to mix."""

    perm: torch.Tensor
    weights: torch.Tensor
    config: MixConfig


def sample_mixup(batch_size: int, config: MixConfig, generator: torch.Generator | None = None) -> MixRecord:
    """Draw partners (k-1 random permutations of the batch) and Dirichlet weights."""
    k = config.k
    if k > batch_size:
        raise ValueError(f"cannot mix k={k} images in a batch of {batch_size}")
    own = torch.arange(batch_size)
    perms = [own] + [torch.randperm(batch_size, generator=generator) for _ in range(k - 1)]
    perm = torch.stack(perms, dim=1)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    w = torch.as_tensor(np.random.default_rng(seed).dirichlet(np.full(k, config.alpha), size=batch_size),
                        dtype=torch.float32)
    if config.p < 1.0:  # unmixed samples put all their weight on themselves (drawn only then: p=1 draws stay as before)
        keep = torch.rand(batch_size, generator=generator) >= config.p
        w[keep] = 0.0
        w[keep, 0] = 1.0
    return MixRecord(perm=perm, weights=w, config=config)


def radial_frequency(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(H, W//2+1) radius of each rfft2 bin as a fraction of Nyquist (0 at DC, 1 at the edge
    midpoints, sqrt(2) in the corners)."""
    fy = torch.fft.fftfreq(height, device=device).abs() / 0.5
    fx = torch.fft.rfftfreq(width, device=device) / 0.5
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def _rfft_weights(width: int, device: torch.device | None) -> torch.Tensor:
    """rfft2 keeps half the columns: every column but DC (and Nyquist for even W) stands for two."""
    n = width // 2 + 1
    w = torch.full((n,), 2.0, device=device)
    w[0] = 1.0
    if width % 2 == 0:
        w[-1] = 1.0
    return w


def _band_mask(config: MixConfig, height: int, width: int, device: torch.device) -> torch.Tensor:
    r = radial_frequency(height, width, device)
    lo, hi = config.band
    return ((r >= lo) & (r < hi)).float()


def _mix_targets(soft_targets: torch.Tensor, rec: MixRecord, share: torch.Tensor) -> torch.Tensor:
    mixed = (rec.weights.to(soft_targets)[:, :, None] * soft_targets[rec.perm]).sum(1)
    share = (rec.config.label_follow * share.clamp(0, 1))[:, None]
    return (1 - share) * soft_targets + share * mixed


def apply_mixup(images: torch.Tensor, soft_targets: torch.Tensor, rec: MixRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix ``images`` (B, C, H, W) and their soft targets as ``rec`` says."""
    if images.ndim != 4 or images.shape[0] != rec.perm.shape[0] or soft_targets.shape[0] != images.shape[0]:
        raise ValueError(f"images {tuple(images.shape)} / targets {tuple(soft_targets.shape)} do not match "
                         f"a record for {rec.perm.shape[0]} samples")
    cfg = rec.config
    if cfg.k == 1 and not (cfg.mode == "dct" and (cfg.drop_dc or cfg.drop_lowest)):
        return images, soft_targets
    if cfg.mode == "dct":
        return _apply_dct(images, soft_targets, rec)
    b, c, h, w = images.shape
    mask = _band_mask(cfg, h, w, torch.device("cpu"))
    if mask.sum() == 0:  # decided on the CPU: no host round trip from the images' device
        return images, soft_targets
    mask = mask.to(images.device)
    spec = torch.fft.rfft2(images)
    wts = rec.weights.to(images)[:, :, None, None, None]
    partners = spec[rec.perm]  # (B, k, C, H, W//2+1)
    if cfg.mode == "complex":
        mixed = (wts * partners).sum(1)
    elif cfg.mode == "amplitude":
        mixed = torch.polar((wts * partners.abs()).sum(1), spec.angle())
    else:  # phase: the weighted circular mean of the partners' phases
        unit = partners / partners.abs().clamp_min(1e-12)
        phase = (wts * unit).sum(1).angle()
        mixed = torch.polar(spec.abs(), phase)
    out = torch.fft.irfft2(mask * mixed + (1 - mask) * spec, s=(h, w))
    energy = spec.abs().square() * _rfft_weights(w, images.device)
    share = (energy * mask).sum(dim=(1, 2, 3)) / energy.sum(dim=(1, 2, 3)).clamp_min(1e-12)
    return out, _mix_targets(soft_targets, rec, share)


# ----------------------------------------------------------------------------------- block DCT

BLOCK = 8


def dct_matrix(n: int = BLOCK, device: torch.device | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n, n): X = D x D^T for a block x."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float().to(device)


def _to_blocks(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5)


def _from_blocks(x: torch.Tensor) -> torch.Tensor:
    b, c, nh, nw, _, _ = x.shape
    return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * BLOCK, nw * BLOCK)


def _apply_dct(images: torch.Tensor, soft_targets: torch.Tensor, rec: MixRecord) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = rec.config
    b, c, h, w = images.shape
    ph, pw = (-h) % BLOCK, (-w) % BLOCK
    x = torch.nn.functional.pad(images, (0, pw, 0, ph), mode="replicate") if (ph or pw) else images
    d = dct_matrix(device=images.device)
    spec = d @ _to_blocks(x) @ d.T  # (B, C, nh, nw, 8, 8)
    u = torch.arange(BLOCK, device=images.device)
    # channel (u, v)'s radius as a fraction of the block's Nyquist (u, v = 7 is the highest)
    r = torch.sqrt(u[:, None].float() ** 2 + u[None, :].float() ** 2) / (BLOCK - 1)
    lo, hi = cfg.band
    mask = ((r >= lo) & (r < hi)).float() if cfg.k > 1 else torch.zeros_like(r)
    wts = rec.weights.to(images)[:, :, None, None, None, None, None]
    mixed = (wts * spec[rec.perm]).sum(1)
    out_spec = mask * mixed + (1 - mask) * spec
    keep = torch.ones_like(r)
    if cfg.drop_dc:
        keep[0, 0] = 0.0
    if cfg.drop_lowest:
        keep[(u[:, None] + u[None, :]) <= cfg.drop_lowest] = 0.0
    out = _from_blocks(d.T @ (out_spec * keep) @ d)[:, :, :h, :w]
    energy = spec.square()
    share = (energy * mask).sum(dim=(1, 2, 3, 4, 5)) / energy.sum(dim=(1, 2, 3, 4, 5)).clamp_min(1e-12)
    return out, _mix_targets(soft_targets, rec, share)


def frequency_mixup(images: torch.Tensor, soft_targets: torch.Tensor, config: MixConfig,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample and apply in one call."""
    return apply_mixup(images, soft_targets, sample_mixup(images.shape[0], config, generator))
