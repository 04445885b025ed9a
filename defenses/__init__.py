"""Training-time defenses against model inversion.

Pure batched tensor functions on ``(B, C, H, W)`` images in [0, 1] with soft targets, each with a
small parameter dataclass, sampled apart from applied so a step can be replayed:

- ``erasing``: batched random erasing (one independent rectangle per sample);
- ``mixup``: frequency-domain MixUp (Fourier band in complex / amplitude / phase mode, block DCT),
  with ``band_for``, the one mapping from a band kind and radii to the band mixed;
- ``hybrid``: MixUp then erasing, built from one ``AugmentParams``;
- ``params``: ``AugmentParams``, every parameter of that augmentation with its range (an agent's
  action maps onto it in ``veil.env.actions``);
- ``tldmi``, ``baselines``, ``dp``: TL-DMI and the field's baselines (negative label smoothing,
  MID, BiDO, DP-SGD);
- ``trapmid``: Trap-MID, trapdoor triggers that inversion attacks find instead of faces;
- ``loft``: LoFt, a rank-r neck that filters the features the classifier reads.
"""

from .erasing import EraseConfig, EraseRecord, apply_erasing, random_erasing, sample_erasing
from .hybrid import HybridConfig, HybridRecord, apply, augment, sample
from .mixup import MixConfig, MixRecord, apply_mixup, band_for, frequency_mixup, sample_mixup
from .params import AugmentParams

__all__ = ["AugmentParams", "EraseConfig", "EraseRecord", "HybridConfig", "HybridRecord", "MixConfig", "MixRecord",
           "apply", "apply_erasing", "apply_mixup", "augment", "band_for", "frequency_mixup", "random_erasing",
           "sample", "sample_erasing", "sample_mixup"]
