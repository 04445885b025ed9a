"""Hybrid augmentation: frequency MixUp, then random erasing, each with its own parameters.

``sample(config, images, generator)`` draws a record, ``apply(images, targets, record)`` uses
it, so any step can be replayed and logged (the torchvision v2 split of ``_get_params`` and
``_transform``). ``HybridConfig.from_params`` turns one ``AugmentParams`` (e.g. an agent's decoded
action) into the two configs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .erasing import EraseConfig, EraseRecord, apply_erasing, sample_erasing
from .mixup import MixConfig, MixRecord, apply_mixup, band_for, sample_mixup
from .params import AugmentParams


@dataclass(frozen=True)
class HybridConfig:
    """MixUp and erasing configs; either may be ``None`` (skipped)."""

    mix: MixConfig | None = None
    erase: EraseConfig | None = None

    @staticmethod
    def from_params(params: AugmentParams, mode: str = "complex", fill: str | float = "mean") -> "HybridConfig":
        """The configs ``params`` stand for; ``mode`` (Fourier or DCT) and ``fill`` are configuration."""
        band = band_for("high" if params.high_band else "low", [params.radius])
        mix = (MixConfig(k=params.k, alpha=params.alpha, band=band, mode=mode, label_follow=params.label_follow)
               if params.k > 1 else None)
        erase = (EraseConfig(p=params.erase_p, scale=params.erase_scale, ratio=params.erase_ratio, value=fill)
                 if params.erase_p > 0 else None)
        return HybridConfig(mix=mix, erase=erase)


@dataclass
class HybridRecord:
    """The draws of one batch (``None`` for a skipped part)."""

    mix: MixRecord | None
    erase: EraseRecord | None


def sample(config: HybridConfig, images: torch.Tensor, generator: torch.Generator | None = None) -> HybridRecord:
    """Draw the random parameters of both parts for this batch (k is capped at the batch size)."""
    mix = None
    if config.mix is not None and config.mix.k > 1:
        cfg = config.mix
        if cfg.k > images.shape[0]:
            cfg = replace(cfg, k=images.shape[0])
        mix = sample_mixup(images.shape[0], cfg, generator)
    erase = sample_erasing(images.shape, config.erase, generator) if config.erase is not None else None
    return HybridRecord(mix=mix, erase=erase)


def apply(images: torch.Tensor, targets: torch.Tensor, record: HybridRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (images clipped back to [0, 1]), then erasing; soft targets follow the mix."""
    if record.mix is not None:
        images, targets = apply_mixup(images, targets, record.mix)
        images = images.clamp(0.0, 1.0)
    if record.erase is not None:
        images = apply_erasing(images, record.erase)
    return images, targets


def augment(images: torch.Tensor, targets: torch.Tensor, config: HybridConfig,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample and apply in one call."""
    return apply(images, targets, sample(config, images, generator))
