"""Training-time defenses against model inversion.

Pure batched tensor functions on `(B, C, H, W)` images in [0, 1] with soft targets, each with a
small parameter dataclass, sampled apart from applied so a step can be replayed:

- `erasing`: batched random erasing (one independent rectangle per sample);
- `mixup`: frequency-domain MixUp (Fourier band in complex / amplitude / phase mode, block DCT);
- `hybrid`: MixUp then erasing, built from the agent's decoded `AugmentParams`;
- `params`: the one parameter space and the action table ([-1, 1]^7 <-> parameters).

TL-DMI and the field's baselines (negative label smoothing, MID, BiDO, DP-SGD) come next.
"""

from .erasing import EraseConfig, EraseRecord, apply_erasing, random_erasing, sample_erasing
from .hybrid import HybridConfig, HybridRecord, apply, augment, sample
from .mixup import MixConfig, MixRecord, apply_mixup, frequency_mixup, sample_mixup
from .params import ACTION_DIM, ACTION_TABLE, AugmentParams, decode, encode, markdown_table

__all__ = ["ACTION_DIM", "ACTION_TABLE", "AugmentParams", "EraseConfig", "EraseRecord", "HybridConfig",
           "HybridRecord", "MixConfig", "MixRecord", "apply", "apply_erasing", "apply_mixup", "augment", "decode",
           "encode", "frequency_mixup", "markdown_table", "random_erasing", "sample", "sample_erasing",
           "sample_mixup"]
