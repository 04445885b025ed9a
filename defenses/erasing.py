"""Batched random erasing (Zhong et al., AAAI 2020; as a model-inversion defense: arXiv 2409.01062).

Each sample of a ``(B, C, H, W)`` batch, with probability ``p``, gets one rectangle of area
fraction ``s ~ U(s_lo, s_hi)`` and aspect ratio ``r ~ logU(r_lo, r_hi)`` at a uniform position,
filled with a value. The rectangle is drawn as torchvision's per-image ``RandomErasing`` draws it
(up to 10 attempts; nothing is erased when none fits), but for every sample at once and
independently: torchvision's v2 transform applied to a batch tensor erases one rectangle shared
by all images. Sampling and application are separate, so a step can be replayed. The boxes are
drawn on the CPU (by a seeded CPU generator, the stream a seed always gave) and the mask is built
on the images' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ATTEMPTS = 10


@dataclass(frozen=True)
class EraseConfig:
    """Random-erasing parameters (defaults: the fixed baseline of arXiv 2409.01062).

    Args:
        p: probability that a sample is erased, in [0, 1].
        scale: (s_lo, s_hi), range of the erased area as a fraction of the image, 0 < s_lo <= s_hi <= 1.
        ratio: (r_lo, r_hi), range of the aspect ratio h/w, drawn log-uniformly, 0 < r_lo <= r_hi.
        value: fill: ``"mean"`` (per-channel batch mean, the paper's data-mean fill), ``"random"``
            (uniform noise in [0, 1] per pixel: veil works in pixel space, where torchvision's
            normal noise would leave the image range), or a number.

    Example:
        >>> record = sample_erasing(images.shape, EraseConfig(p=1.0), generator)
        >>> erased = apply_erasing(images, record)
    """

    p: float = 1.0
    scale: tuple[float, float] = (0.1, 0.4)
    ratio: tuple[float, float] = (1.0, 1.0)
    value: str | float = "mean"

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"erase probability p must be in [0, 1], got {self.p}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"erase scale must satisfy 0 < s_lo <= s_hi <= 1, got {self.scale}")
        rlo, rhi = self.ratio
        if not 0.0 < rlo <= rhi:
            raise ValueError(f"erase ratio must satisfy 0 < r_lo <= r_hi, got {self.ratio}")
        if isinstance(self.value, str) and self.value not in ("mean", "random"):
            raise ValueError(f"erase value must be 'mean', 'random' or a number, got {self.value!r}")


@dataclass
class EraseRecord:
    """What was drawn for one batch: per sample whether it is erased and its box
    (top, left, height, width) in pixels, plus the fill rule."""

    erased: torch.Tensor  # (B,) bool
    boxes: torch.Tensor  # (B, 4) int64: top, left, height, width (zeros where not erased)
    value: str | float
    noise_seed: int  # seeds the random fill, so a replay fills the same noise

    def mask(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """(B, H, W) bool on ``device`` (default: the CPU, where the boxes were drawn): the erased pixels."""
        top, left, h, w = self.boxes.to(device).unbind(1)
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None])
        in_cols = (cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None])
        return in_rows[:, :, None] & in_cols[:, None, :]  # boxes of unerased samples are empty


def sample_erasing(shape: torch.Size | tuple[int, ...], config: EraseConfig,
                   generator: torch.Generator | None = None) -> EraseRecord:
    """Draw erasing parameters for a batch of ``shape`` = (B, C, H, W), all samples at once."""
    b, _, height, width = shape
    area = height * width
    u = torch.rand(b, ATTEMPTS, 4, generator=generator, dtype=torch.float64)
    lo, hi = config.scale
    erase_area = area * (lo + (hi - lo) * u[..., 0])
    log_r = math.log(config.ratio[0]) + (math.log(config.ratio[1]) - math.log(config.ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    # torchvision rounds with Python's round(); torch.round is also round-half-to-even
    h = torch.round(torch.sqrt(erase_area * aspect)).long()
    w = torch.round(torch.sqrt(erase_area / aspect)).long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1)  # the first attempt that fits (0 if none does)
    any_fit = fits.any(dim=1)
    idx = torch.arange(b)
    h, w = h[idx, first], w[idx, first]
    top = torch.floor(u[idx, first, 2] * (height - h + 1)).long()
    left = torch.floor(u[idx, first, 3] * (width - w + 1)).long()
    erased = (torch.rand(b, generator=generator) < config.p) & any_fit
    boxes = torch.stack([top, left, h, w], dim=1) * erased[:, None]
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return EraseRecord(erased=erased, boxes=boxes, value=config.value, noise_seed=seed)


def apply_erasing(images: torch.Tensor, record: EraseRecord) -> torch.Tensor:
    """Fill each sample's rectangle; a new tensor, the input is left untouched."""
    if images.ndim != 4 or images.shape[0] != record.erased.shape[0]:
        raise ValueError(f"images of shape {tuple(images.shape)} do not match a record for "
                         f"{record.erased.shape[0]} samples")
    mask = record.mask(images.shape[2], images.shape[3], images.device)[:, None]
    if record.value == "mean":  # broadcast (1, C, 1, 1): no full-size fill tensor
        return torch.where(mask, images.mean(dim=(0, 2, 3), keepdim=True), images)
    if record.value == "random":
        g = torch.Generator(device=images.device).manual_seed(record.noise_seed)
        fill = torch.rand(images.shape, generator=g, device=images.device, dtype=images.dtype)
        return torch.where(mask, fill, images)
    return images.masked_fill(mask, float(record.value))


def random_erasing(images: torch.Tensor, config: EraseConfig = EraseConfig(),
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample and apply in one call."""
    return apply_erasing(images, sample_erasing(images.shape, config, generator))
