"""Training-time defenses against model inversion (filled by the defenses issue).

Pure batched tensor functions on `(B, C, H, W)` images with soft targets, each with a small
parameter dataclass, sampled apart from applied so a step can be replayed: batched random
erasing, frequency-domain MixUp (Fourier band and block-DCT), the hybrid of both, TL-DMI, and
the field's baselines (negative label smoothing, MID, BiDO, DP-SGD).
"""
