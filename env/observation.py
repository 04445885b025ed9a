"""What the agent observes before each batch, built by one function: ``FaceAugmentEnv`` fills it
from the game, an exported ``PolicyAugmenter`` from what a training loop feeds it."""

from __future__ import annotations

import math

import numpy as np

from .actions import ACTION_DIM

OBS_NAMES = ("progress", "phase_fr", "loss_clean", "loss_aug", "acc_train", "acc_val", "probe_top1", "grad_norm")
"""The training-state entries, in order; the last action follows them."""
OBS_DIM = len(OBS_NAMES) + ACTION_DIM
OBS_BOUND = 10.0
"""Every entry is clipped to [-OBS_BOUND, OBS_BOUND], the observation space's box."""


def observation(*, step: int, horizon: int, fr_step: bool, loss_clean: float, loss_aug: float, log_k: float,
                acc_train: float, acc_val: float, probe_top1: float, grad_norm: float,
                last_action: np.ndarray) -> np.ndarray:
    """The observation (``OBS_NAMES``, then the last action) as float32: progress min(1, step /
    horizon), whether the step trains the FR model, the clean and augmented losses over ln K
    (``log_k``), train and validation top-1, the probe's top-1 and log1p(gradient norm)."""
    state = [min(1.0, step / max(1, horizon)), float(fr_step), loss_clean / log_k, loss_aug / log_k, acc_train,
             acc_val, probe_top1, math.log1p(grad_norm)]
    values = np.concatenate([np.asarray(state, dtype=np.float32), np.asarray(last_action, dtype=np.float32)])
    return np.clip(values, -OBS_BOUND, OBS_BOUND).astype(np.float32)
