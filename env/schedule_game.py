"""``FaceScheduleEnv``: whole training runs as episodes, so a policy over them is a schedule.

The per-batch game (``FaceAugmentEnv``) lets an adversary choose each batch's augmentation while
the FR model trains against it, and deploys the policy's mean on a fresh model. Here an episode
*is* a deployment: ``reset`` builds a fresh FR model exactly as ``veil train-fr`` does (seeded
initialisation, the same trainer, learning-rate schedule and batch order), each step trains one
segment of the run (``segments`` equal shares of ``epochs``) under the augmentation the action
decodes to, and the last step is rewarded with the deployed objective: minus the privacy probe's
top-1 on the finished model, minus a penalty for validation accuracy lost beyond ``budget``
points against ``acc_reference`` (an undefended target's). The agent observes only progress, so
its deterministic policy is a schedule: exported as a schedule file and replayed with
``veil train-fr --augment-schedule`` on the same seed, it reproduces the episode's model exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from veil.defenses.params import AugmentParams
from veil.defenses.schedule import Phase, Schedule
from veil.recognition import (
    DataConfig,
    DeviceConfig,
    FaceSplit,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    split_identities,
)

from .actions import ACTION_DIM, ActionCodec

ScheduleProbe = Callable[[nn.Module, FaceSplit, int], float]
"""A privacy probe of a finished target: (model, split, seed) -> attack top-1 in [0, 1]."""

SCHEDULE_SEED_OFFSET = 7919
"""The schedule's draws are seeded with the run's seed plus this, as ``veil train-fr`` seeds them."""


@dataclass(frozen=True)
class ScheduleGameConfig:
    """The whole-run game.

    Args:
        data, split: the face set; the split is always scored on its validation part (carved from
            the private training images), never on the test split.
        model, epochs, batch_size, lr: the FR run each episode is (``veil train-fr``'s options).
        segments: actions per run; segment i trains epochs [round(i E/S), round((i+1) E/S)).
        k_max, mix_mode, erase_fill, fixed_params, param_bounds: how an action decodes (the
            per-batch game's ``ActionCodec``): fixed parameters ignore their dimension, bounded
            ones span only their box.
        acc_reference: validation top-1 of an undefended target of this budget (a fraction);
            ``None``: no accuracy term.
        budget, penalty: the reward loses ``penalty * max(0, drop - budget) / 100`` for a drop of
            ``drop`` points of validation top-1 against ``acc_reference``.
        seed: the first episode's seed; episode j of an unseeded ``reset`` trains seed + j.
        device: where each run's FR model trains (``auto``: CUDA, then MPS, then CPU), or a
            ``DeviceConfig`` with the FR model's speed options (AMP, channels-last, compile).
    """

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: str = "cnn"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    segments: int = 3
    k_max: int = 6
    mix_mode: str = "complex"
    erase_fill: str | float = "mean"
    fixed_params: dict[str, float] = field(default_factory=dict)
    param_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    acc_reference: float | None = None
    budget: float = 2.0
    penalty: float = 5.0
    seed: int = 100
    device: str | DeviceConfig = "auto"

    def __post_init__(self) -> None:
        if not 1 <= self.segments <= self.epochs:
            raise ValueError(f"segments must be in 1..epochs ({self.epochs}), got {self.segments}")
        if self.acc_reference is not None and not 0.0 <= self.acc_reference <= 1.0:
            raise ValueError(f"acc_reference must be a fraction in [0, 1], got {self.acc_reference}")
        if not (math.isfinite(self.budget) and math.isfinite(self.penalty)) or self.budget < 0 or self.penalty < 0:
            raise ValueError(f"budget and penalty must be finite and >= 0, got {self.budget}, {self.penalty}")
        object.__setattr__(self, "split", replace(self.split, validation=True))
        object.__setattr__(self, "param_bounds", dict(self.codec.bounds))

    @cached_property
    def codec(self) -> ActionCodec:
        return ActionCodec(k_max=self.k_max, bounds=self.param_bounds, fixed=self.fixed_params,
                           mix_mode=self.mix_mode, erase_fill=self.erase_fill)

    def segment_ends(self) -> list[int]:
        """The epoch each segment ends at."""
        return [round((i + 1) * self.epochs / self.segments) for i in range(self.segments)]

    def reward(self, acc_val: float, probe_top1: float) -> tuple[float, float]:
        """The deployed objective of a model with validation top-1 ``acc_val`` and probe top-1
        ``probe_top1``: ``-probe_top1 - penalty * max(0, drop - budget) / 100``, and the drop (points)."""
        drop = 100.0 * (self.acc_reference - acc_val) if self.acc_reference is not None else 0.0
        return -probe_top1 - self.penalty * max(0.0, drop - self.budget) / 100.0, drop

    def observation(self, segment: int) -> np.ndarray:
        """What the agent sees before segment ``segment``: progress, then the segment one-hot."""
        obs = np.zeros(1 + self.segments, dtype=np.float32)
        obs[0] = 0.0 if segment == 0 else self.segment_ends()[segment - 1] / self.epochs
        obs[1 + min(segment, self.segments - 1)] = 1.0
        return obs


def schedule_of(config: ScheduleGameConfig, params: list[AugmentParams]) -> Schedule:
    """The schedule that applies ``params[i]`` during segment i (a placeholder phase covers the
    segments not chosen yet; they are never reached before they are chosen)."""
    ends = config.segment_ends()
    chosen = [Phase(ends[i] / config.epochs, params=p) for i, p in enumerate(params)]
    if len(chosen) < config.segments:
        chosen.append(Phase(1.0, params=params[-1] if params else AugmentParams()))
    return Schedule(tuple(chosen), mode=config.mix_mode, fill=config.erase_fill)


class FaceScheduleEnv(gym.Env):
    """Whole FR training runs as episodes (see the module docstring).

    Action: ``Box(-1, 1, (8,))``, decoded like the per-batch game's (``veil.env.actions``), with
    ``fixed_params`` and ``param_bounds``. Observation: ``Box(0, 1, (1 + segments,))``: progress
    (the share of epochs done), then a one-hot of the segment. Reward: 0 until the last segment,
    then ``-probe_top1 - penalty * max(0, drop - budget) / 100``. ``info`` at the end carries
    ``acc_val``, ``probe_top1``, ``drop`` and every segment's ``segment_params``; ``model`` is the finished
    FR model and ``schedule`` the schedule the episode played.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: ScheduleGameConfig | None = None, split: FaceSplit | None = None,
                 probe: ScheduleProbe | None = None) -> None:
        super().__init__()
        self.config = config or ScheduleGameConfig()
        self.split = split if split is not None else split_identities(load_faces(self.config.data), self.config.split)
        if self.split.kind != "validation":
            raise ValueError("FaceScheduleEnv scores on the validation split; pass a split made with validation=True")
        self.probe = probe
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (1 + self.config.segments,), np.float32)
        self.episode = 0
        self.run_seed = self.config.seed
        self.trainer: Trainer | None = None
        self.params: list[AugmentParams] = []
        self.schedule: Schedule | None = None

    @property
    def model(self) -> nn.Module | None:
        return None if self.trainer is None else self.trainer.model

    def _fresh_trainer(self, seed: int) -> Trainer:
        """A fresh FR model and trainer, built as ``veil train-fr`` builds them for this seed."""
        c = self.config
        cfg = ModelConfig(name=c.model, num_classes=self.split.num_private, in_channels=c.data.channels,
                          image_size=c.data.image_size)
        torch.manual_seed(seed)  # the initial weights follow the seed
        model = build_model(cfg)
        return Trainer(model, TrainerConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=seed),
                       num_classes=self.split.num_private, device=c.device)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.run_seed = seed if seed is not None else self.config.seed + self.episode
        self.episode += 1
        self.trainer = self._fresh_trainer(self.run_seed)
        self.generator = torch.Generator().manual_seed(self.run_seed + SCHEDULE_SEED_OFFSET)
        self.params = []
        self.schedule = None
        return self.config.observation(0), {"seed": self.run_seed}

    def game_state(self) -> dict[str, Any]:
        """The run so far (FR trainer, schedule draws, chosen settings, seed): what population-based
        training copies from a better member at a segment end."""
        if self.trainer is None:
            raise RuntimeError("call reset() before game_state()")
        return copy.deepcopy({"trainer": self.trainer.state_dict(), "generator": self.generator.get_state(),
                              "params": [asdict(p) for p in self.params], "run_seed": self.run_seed})

    def set_game_state(self, state: dict[str, Any]) -> np.ndarray:
        """Continue the run ``state`` holds (``game_state``); returns the observation before its next segment."""
        self.run_seed = int(state["run_seed"])
        self.trainer = self._fresh_trainer(self.run_seed)
        self.trainer.load_state_dict(state["trainer"])
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
        self.params = [AugmentParams(**p) for p in state["params"]]
        self.schedule = schedule_of(self.config, self.params) if self.params else None
        return self.config.observation(len(self.params))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.trainer is None:
            raise RuntimeError("call reset() before step()")
        c, t = self.config, self.trainer
        i = len(self.params)
        params = c.codec.decode(np.asarray(action, dtype=np.float64))
        self.params.append(params)
        self.schedule = schedule_of(c, self.params)
        schedule, generator = self.schedule, self.generator

        def augment(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            _, images, targets = schedule.augment(images, targets, t.global_step / max(1, t.total_steps or 1),
                                                  generator)
            return images, targets

        n = len(self.split.train_labels)
        total = math.ceil(n / c.batch_size) * c.epochs  # the whole run's steps: the LR schedule spans the run
        t.config = replace(t.config, epochs=c.segment_ends()[i], total_steps=total)
        t.fit(self.split.train_images, self.split.train_labels, self.split.test_images, self.split.test_labels,
              augment=augment, progress=False)
        acc = float(t.history[-1]["test_top1"])
        info: dict[str, Any] = {"segment": i, "acc_val": acc, "params": params, "seed": self.run_seed}
        done = i + 1 == c.segments
        reward = 0.0
        if done:
            t.config = replace(t.config, total_steps=None)  # as veil train-fr's finished trainer has it
            top1 = float(self.probe(t.model, self.split, self.run_seed)) if self.probe else 0.0
            reward, drop = c.reward(acc, top1)
            info.update(probe_top1=top1, drop=drop, reward_privacy=-top1, reward_utility=reward + top1,
                        segment_params=list(self.params))
        return c.observation(min(i + 1, c.segments - 1)), float(reward), done, False, info
