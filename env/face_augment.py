"""``FaceAugmentEnv``: the adversarial augmentation game around a face-recognition trainer, and
``EnvConfig``, everything it is configured by."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from veil.defenses.params import AugmentParams
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
    one_hot,
    random_hflip,
    split_identities,
    to_float,
)
from veil.recognition.device import as_device_config, to_device

from .actions import ACTION_DIM, ActionCodec
from .deploy_price import DeployPrice
from .observation import OBS_BOUND, OBS_DIM, observation

REWARD_TERMS = ("reward_adv", "reward_utility", "reward_preserve", "reward_privacy", "reward_deploy")
"""The reward's terms, each in ``info`` (their sum is the reward)."""

Probe = Callable[[nn.Module], float]
"""A privacy probe: target model -> attack top-1 in [0, 1] (the attacks package provides one)."""


@dataclass(frozen=True)
class EnvConfig:
    """Everything the environment needs; see ``FaceAugmentEnv`` for what each part does. The
    defaults are ``veil train-agent``'s, which every documented result used.

    Args:
        data, split: the face set and its private/public split (the env trains on private train).
        model, width: FR backbone (``veil.recognition.models``) and the small CNN's width.
        lr, batch_size: FR optimizer settings (Adam, constant LR).
        episode_steps: batches per episode.
        horizon: the planned number of FR batches in the run; the observation's progress is
            min(1, steps so far / horizon) (an exported policy is fed step / total_steps).
        schedule: ``alternating`` (a policy phase of ``policy_steps`` with FR weights frozen,
            then an FR phase of ``fr_steps``) or ``interleaved`` (every step is both: the agent
            is rewarded with the loss, then the FR model takes its step on the same batch).
        policy_steps, fr_steps: phase lengths (N1, N2) of the alternating schedule.
        k_max, mix_mode, erase_fill: fixed parts of the augmentation (the action picks the rest).
        val_fraction, val_every: held-out share of the private training images and how often
            (in steps) validation accuracy is measured for the utility constraint.
        acc_budget, utility_weight: the penalty ``utility_weight * max(0, acc_budget - acc_val)``.
        privacy_weight, probe_every: the term ``-privacy_weight * probe_top1`` from a probe
            called every ``probe_every`` steps (0: never).
        clean_every, clean_batch: how often (in steps) the clean-batch loss baseline is refreshed,
            and on how many of the batch's images (0: all). It is a smoothed observation, so a
            few images every few steps keep its forward passes a small share of the FR work.
        reward_scale: how the adversary's gain is normalized. Its gain is the *excess* loss on the
            augmented batch, ``L_aug - H(targets)`` (the KL divergence from the soft targets: mixed
            labels carry entropy no model can remove, and rewarding it would pay the adversary for
            mixing rather than for beating the model). ``zscore`` (default): against a running mean
            and std of that excess, clipped to [-5, 5] (invariant to the FR model's progress, as
            Adversarial AutoAugment normalizes); ``relative``: (excess - L_clean) / L_clean
            against the running clean-batch loss; ``raw``: the excess itself.
        preserve_budget, preserve_weight: the adversary may not win by wiping the identity:
            ``-preserve_weight * max(0, preserve_budget - acc_aug)``, where ``acc_aug`` is the FR
            model's top-1 on the augmented batch against each image's dominant label. Unlike the
            validation term this one answers to the action of the step itself.
        preserve_on: which images that top-1 is measured on. ``batch`` (default): the step's own
            augmented training batch; the FR model learns to name its training images under almost
            any augmentation, so late in the game the term stops binding. ``heldout``: the
            held-out validation images, augmented with the step's parameters (a fresh draw), which
            the model never trains on: still a per-action signal, but one that measures whether
            an identity survives the augmentation for a model that has to generalize.
            ``heldout-drop``: one minus what the augmentation costs there, ``1 - max(0, clean top-1
            - augmented top-1)`` on the held-out images, so ``preserve_budget = 0.95`` lets the
            adversary take at most 5 points of the current model's held-out accuracy, however
            accurate the model is yet.
        ema: smoothing of the running statistics.
        fixed_params: action parameters fixed by configuration, like ``mix_mode`` (their action
            dimensions are then ignored), e.g. ``{"label_follow": 0.0, "high_band": 0.0}``: MixUp's
            targets never follow the mix and only the low band is mixed, the region measured to
            lower the attacks (docs/RESULTS.md). Names from the action table.
        param_bounds: ``{name: (lo, hi)}``: the action spans only that range of the parameter,
            e.g. ``{"radius": (0.0, 0.05)}``: a utility constraint set from a fixed sweep (mixing
            a wider band costs accuracy at deployment that the game cannot see), inside which the
            agent still plays the adversary. Exported with the policy.
        deploy_price: a ``DeployPrice`` (``veil.env.deploy_price``): the term
            ``-weight * max(0, price(value) - budget)`` on the step's value of one parameter, where
            the price is the natural accuracy a fresh target trained under that value lost in a
            ``veil calibrate`` run: the outer loop's measurements as a per-action utility term, so
            the adversary moves that parameter freely where deployment measured it cheap. The
            parameter must not be fixed; ``None`` (default): no such term.
        reset_mode: ``continue`` (the FR model keeps learning across episodes: the game) or
            ``restart`` (reset() restores the FR model's initial snapshot).
        warmup_steps: clean FR steps before the game starts (and before the snapshot). From a
            random FR model the augmented loss sits at ln K whatever the action, so the adversary
            gets no signal until the FR model has learned something.
        seed: seeds the FR model, batches and augmentation draws.
        device: where the FR model, its batches and their augmentation run (``auto``: CUDA, then
            MPS, then CPU), or a ``DeviceConfig`` that adds the FR model's speed options (AMP,
            channels-last, compile); the draws stay on the CPU generator, so a seed plays the same game.
    """

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: str = "cnn"
    width: int = 32
    lr: float = 1e-3
    batch_size: int = 32
    episode_steps: int = 64
    horizon: int = 4096
    schedule: str = "alternating"
    policy_steps: int = 8
    fr_steps: int = 8
    k_max: int = 6
    mix_mode: str = "complex"
    erase_fill: str | float = "mean"
    val_fraction: float = 0.15
    val_every: int = 64
    acc_budget: float = 0.0
    utility_weight: float = 1.0
    privacy_weight: float = 0.0
    probe_every: int = 0
    clean_every: int = 4
    clean_batch: int = 16
    reward_scale: str = "zscore"
    preserve_budget: float = 0.5
    preserve_weight: float = 1.0
    preserve_on: str = "batch"
    ema: float = 0.95
    fixed_params: dict[str, float] = field(default_factory=dict)
    param_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    deploy_price: DeployPrice | None = None
    reset_mode: str = "continue"
    warmup_steps: int = 0
    seed: int = 0
    device: str | DeviceConfig = "auto"

    def __post_init__(self) -> None:
        if self.schedule not in ("alternating", "interleaved"):
            raise ValueError(f"schedule must be alternating or interleaved, got {self.schedule!r}")
        if self.reward_scale not in ("relative", "zscore", "raw"):
            raise ValueError(f"reward_scale must be relative, zscore or raw, got {self.reward_scale!r}")
        if self.preserve_on not in ("batch", "heldout", "heldout-drop"):
            raise ValueError(f"preserve_on must be batch, heldout or heldout-drop, got {self.preserve_on!r}")
        if self.reset_mode not in ("continue", "restart"):
            raise ValueError(f"reset_mode must be continue or restart, got {self.reset_mode!r}")
        if self.episode_steps < 1 or self.policy_steps < 0 or self.fr_steps < 0 or self.policy_steps + self.fr_steps < 1:
            raise ValueError("episode_steps must be >= 1 and policy_steps + fr_steps >= 1")
        if not 0.0 <= self.preserve_budget <= 1.0 or self.preserve_weight < 0:
            raise ValueError(f"preserve_budget must be in [0, 1] and preserve_weight >= 0, got "
                             f"{self.preserve_budget}, {self.preserve_weight}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        object.__setattr__(self, "param_bounds", dict(self.codec.bounds))  # checked here, not mid-game
        if self.deploy_price is not None and self.deploy_price.param in self.fixed_params:
            raise ValueError(f"{self.deploy_price.param} is fixed, so pricing it by deployment means nothing; "
                             f"unfix it or drop the deploy price")
        if self.clean_every < 1 or self.clean_batch < 0:
            raise ValueError(f"clean_every must be >= 1 and clean_batch >= 0, got {self.clean_every}, {self.clean_batch}")

    @cached_property
    def codec(self) -> ActionCodec:
        """How this game turns an action into an applied augmentation (built, and so checked, once)."""
        return ActionCodec(k_max=self.k_max, bounds=self.param_bounds, fixed=self.fixed_params,
                           mix_mode=self.mix_mode, erase_fill=self.erase_fill)


class FaceAugmentEnv(gym.Env):
    """The adversarial augmentation game around a face-recognition trainer.

    ## Description
    Each step is one batch of the FR model's private training images. The agent (the adversary)
    picks the parameters of frequency-domain MixUp and random erasing for that batch and is
    rewarded with the FR loss on the augmented batch; the FR model, in its own phases
    (``schedule``), minimizes that loss. What the FR model learns under the augmentations the
    agent finds hardest is meant to leak less to model-inversion attacks, and a utility constraint,
    a per-step identity-preservation term, an optional privacy probe and an optional deployment
    price keep the adversary from winning by wiping the faces.

    ## Action Space
    ``Box(-1, 1, (8,), float32)``, decoded by ``veil.env.actions`` (its table; docs/reference.md's action
    table): k images mixed, Dirichlet alpha, band radius, band side, erase probability, erased
    area, aspect range, and how far MixUp's targets follow the mix (``label_follow``). Parameters in
    ``EnvConfig.fixed_params`` ignore their dimension; ``EnvConfig.param_bounds`` squeeze theirs.

    ## Observation Space
    ``Box(-10, 10, (16,), float32)``, built by ``veil.env.observation.observation``:

    | Num | Observation | Range |
    |-----|-------------|-------|
    | 0 | progress: min(1, FR batches so far / ``horizon``) | [0, 1] |
    | 1 | whether this step updates the FR model | {0, 1} |
    | 2 | running clean-batch loss / ln K | [0, 10] |
    | 3 | running augmented-batch loss / ln K | [0, 10] |
    | 4 | running train top-1 on the augmented batches | [0, 1] |
    | 5 | last validation top-1 (held-out private training images) | [0, 1] |
    | 6 | last probe top-1 (0 before any probe) | [0, 1] |
    | 7 | log1p(last FR gradient norm) | [0, 10] |
    | 8-15 | the last action | [-1, 1] |

    ## Rewards
    ``reward = adv - utility_weight * max(0, acc_budget - acc_val)
    - preserve_weight * max(0, preserve_budget - acc_preserve) - privacy_weight * probe_top1
    - deploy_price.weight * max(0, deploy_price(value) - deploy_price.budget)``
    where ``adv`` is the excess loss on the augmented batch (``L_aug - H(targets)``), z-scored
    against its running statistics by default (``reward_scale``). ``info`` carries each term:
    ``reward_adv``, ``reward_utility``, ``reward_preserve``, ``reward_privacy``, ``reward_deploy``
    (their sum is the reward), with ``loss_aug``, ``loss_excess``, ``acc_aug`` and ``acc_preserve``
    (``acc_aug``, or the held-out score of ``preserve_on="heldout"`` / ``"heldout-drop"``) beside them.

    ## Starting State
    A freshly initialized FR model (seeded), trained for ``warmup_steps`` clean batches.
    ``reset()`` keeps the current FR model (``reset_mode="continue"``: the game goes on across
    episodes) or restores the snapshot taken after the warm-up (``"restart"``); ``reset(seed=...)``
    always restores it and replays batches and draws from that seed, so a seeded episode is
    reproducible. The observation starts from the model's measured validation accuracy.

    ## Episode End
    Never terminates; truncated after ``episode_steps`` batches.

    ## Arguments
    ``gymnasium.make(ENV_ID, config=..., split=..., probe=...)`` or ``FaceAugmentEnv(...)``:

    | Parameter | Type | Default | Description |
    |-----------|------|---------|-------------|
    | ``config`` | ``EnvConfig`` | ``EnvConfig()`` | the game: data, FR model, phases, reward terms, fixed and bounded parameters |
    | ``split`` | ``FaceSplit`` | loaded from ``config.data`` and ``config.split`` | the private/public identity split (pass one to share it between envs) |
    | ``probe`` | ``Callable[[nn.Module], float]`` | ``None`` | the privacy probe (attack top-1 of a model), called every ``config.probe_every`` steps |

    ## Version History
    * v1: ``label_follow`` joined the action as dimension 7 (veil 0.10), so the action has 8
      entries (was 7) and the observation, which ends with the last action, 16 (was 15); a policy
      exported under v0 still loads and acts with ``label_follow = 1``. Later, spaces unchanged:
      ``fixed_params`` (0.10), ``preserve_on="heldout"`` (0.11) and ``"heldout-drop"`` (0.12),
      ``param_bounds`` (0.12), ``deploy_price`` and the ``reward_deploy`` term (0.14); the
      ``EnvConfig`` defaults became ``veil train-agent``'s (``batch_size`` 32, ``policy_steps`` and
      ``fr_steps`` 8; were 64, 32 and 32). Registered as ``veil/FaceAugment-v0`` until veil 0.16.
    * v0: initial version (veil 0.1-0.9): 7 action entries, 15 observation entries; the reward's
      adversary, utility, preserve (on the augmented batch) and privacy terms.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, split: FaceSplit | None = None,
                 probe: Probe | None = None) -> None:
        super().__init__()
        self.config = config = config or EnvConfig()
        self.split = split if split is not None else split_identities(load_faces(config.data), config.split)
        self.num_classes = self.split.num_private
        self.probe = probe
        self.codec = config.codec
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (OBS_DIM,), dtype=np.float32)

        # hold out part of the private training images for the utility constraint
        g = torch.Generator().manual_seed(config.seed + 1)
        order = torch.randperm(len(self.split.train_labels), generator=g)
        n_val = max(1, int(round(config.val_fraction * len(order))))
        self.val_idx, self.train_idx = order[:n_val], order[n_val:]
        if len(self.train_idx) < config.batch_size:
            raise ValueError(f"{len(self.train_idx)} training images after the validation hold-out is fewer "
                             f"than batch_size={config.batch_size}")
        speed = as_device_config(config.device)
        self.device = speed.resolve()
        if config.preserve_on != "batch":  # the held-out images as the FR model takes them, for that term
            self._val_x = to_float(to_device(self.split.train_images[self.val_idx], self.device))
            self._val_y = one_hot(to_device(self.split.train_labels[self.val_idx], self.device), self.num_classes)

        torch.manual_seed(config.seed)
        image_size = int(self.split.train_images.shape[-1])
        self.model_config = ModelConfig(name=config.model, num_classes=self.num_classes,
                                        in_channels=int(self.split.train_images.shape[1]),
                                        image_size=image_size, width=config.width)
        model = build_model(self.model_config)
        self.trainer = Trainer(model, TrainerConfig(lr=config.lr, batch_size=config.batch_size, schedule="constant",
                                                    seed=config.seed), num_classes=self.num_classes, device=speed)
        self._gen = torch.Generator().manual_seed(config.seed + 2)
        self._cursor = len(self.train_idx)  # forces a shuffle on first use
        self._perm = self.train_idx
        for _ in range(config.warmup_steps):
            self.trainer.step(*self._next_batch())
        self._snapshot = copy.deepcopy(self.trainer.state_dict())  # state_dict() shares storage
        self._clean_heldout: float | None = None  # the FR model's clean held-out top-1, until it changes
        self.log_k = math.log(self.num_classes)
        self.total_steps = 0
        self._init_stats()

    # ------------------------------------------------------------------ helpers

    def _init_stats(self) -> None:
        self.episode_step = 0
        self.loss_clean = self.log_k
        self.loss_aug = self.log_k
        self.aug_mean, self.aug_var, self.aug_count = 0.0, 0.0, 0
        self.acc_train = 0.0
        self.acc_val = self._validate()
        self.probe_top1 = 0.0
        self.grad_norm = 0.0
        self.last_action = np.zeros(ACTION_DIM, dtype=np.float32)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.config.batch_size
        if self._cursor + bs > len(self._perm):
            self._perm = self.train_idx[torch.randperm(len(self.train_idx), generator=self._gen)]
            self._cursor = 0
        idx = self._perm[self._cursor:self._cursor + bs]
        self._cursor += bs
        x = random_hflip(to_float(to_device(self.split.train_images[idx], self.device)), self._gen)
        return x, one_hot(to_device(self.split.train_labels[idx], self.device), self.num_classes)

    def _validate(self) -> float:
        return self.trainer.evaluate(self.split.train_images[self.val_idx],
                                     self.split.train_labels[self.val_idx])["top1"]

    def _preserve_score(self, batch_accuracy: float, params: AugmentParams) -> float:
        """What the preserve term holds to its budget (``preserve_on``): the augmented batch's
        top-1, the held-out images' top-1 under a fresh draw of ``params``, or one minus what that
        draw costs against the current model's clean held-out top-1."""
        mode = self.config.preserve_on
        if mode == "batch":
            return batch_accuracy
        augmented = self.trainer.evaluate_batch(*self.codec.apply(params, self._val_x, self._val_y, self._gen)).accuracy
        if mode == "heldout":
            return augmented
        if self._clean_heldout is None:  # frozen through a policy phase: measured once per model
            self._clean_heldout = self._validate()
        return 1.0 - max(0.0, self._clean_heldout - augmented)

    def evaluate_fr(self) -> dict[str, float]:
        """Clean top-1/top-5 of the FR model on the private test split."""
        return self.trainer.evaluate(self.split.test_images, self.split.test_labels)

    # what changes as the game is played, beside the trainer and the batch generator (for a resume)
    GAME_FIELDS = ("_cursor", "_perm", "_clean_heldout", "total_steps", "episode_step", "loss_clean", "loss_aug",
                   "aug_mean", "aug_var", "aug_count", "acc_train", "acc_val", "probe_top1", "grad_norm", "last_action")

    def game_state(self) -> dict[str, Any]:
        """Everything of the game that changes as it is played (the FR trainer with its optimizer
        and RNG, the batch order and generator, the running statistics), as tensors and plain
        values a weights-only load reads; what the config rebuilds is left out."""
        values = {name: getattr(self, name) for name in self.GAME_FIELDS}
        values["last_action"] = torch.from_numpy(np.asarray(self.last_action, dtype=np.float32).copy())
        return {"trainer": self.trainer.state_dict(), "snapshot": self._snapshot, "gen": self._gen.get_state(),
                "values": values}

    def set_game_state(self, state: dict[str, Any]) -> None:
        """Put the game back where ``game_state`` left it."""
        self.trainer.load_state_dict(state["trainer"])
        self._snapshot = state["snapshot"]
        self._gen.set_state(state["gen"])
        for name, value in state["values"].items():
            if name not in self.GAME_FIELDS:
                raise ValueError(f"the game checkpoint holds an unknown field {name!r}")
            setattr(self, name, value.numpy().copy() if name == "last_action" else value)

    def save_fr(self, path, extra: dict[str, Any] | None = None):
        """Write the game's FR model as a ``veil train-fr``-style checkpoint (atomic; it carries
        its model config, so ``veil attack`` can rebuild it without pickle)."""
        return self.trainer.save_checkpoint(path, extra={"model_config": asdict(self.model_config), **(extra or {})})

    def is_fr_step(self, step: int | None = None) -> bool:
        """Whether global step ``step`` (default: the next one) updates the FR model."""
        c = self.config
        if c.schedule == "interleaved":
            return True
        s = self.total_steps if step is None else step
        return s % (c.policy_steps + c.fr_steps) >= c.policy_steps

    def _obs(self) -> np.ndarray:
        return observation(step=self.total_steps, horizon=self.config.horizon, fr_step=self.is_fr_step(),
                           loss_clean=self.loss_clean, loss_aug=self.loss_aug, log_k=self.log_k,
                           acc_train=self.acc_train, acc_val=self.acc_val, probe_top1=self.probe_top1,
                           grad_norm=self.grad_norm, last_action=self.last_action)

    # ------------------------------------------------------------------ gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        fresh = seed is not None or self.config.reset_mode == "restart"
        if seed is not None:  # a seeded reset replays the game from its start
            self._gen.manual_seed(seed)
            self._cursor = len(self.train_idx)
            self.total_steps = 0
        if fresh:
            self.trainer.load_state_dict(self._snapshot)
            self._clean_heldout = None
        keep = None if fresh else (self.probe_top1, self.aug_mean, self.aug_var, self.aug_count)
        self._init_stats()
        if keep is not None:  # the game goes on: keep the probe score and the reward's running statistics
            self.probe_top1, self.aug_mean, self.aug_var, self.aug_count = keep
        return self._obs(), {"acc_val": self.acc_val}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        c = self.config
        action = np.asarray(action, dtype=np.float32)
        if action.size != ACTION_DIM:
            raise ValueError(f"the action must have {ACTION_DIM} entries (the action table), got shape {action.shape}")
        action = np.clip(action.reshape(ACTION_DIM), -1.0, 1.0)
        images, targets = self._next_batch()
        params, aug_images, aug_targets = self.codec.augment(action, images, targets, self._gen)
        self.last_batch = (aug_images, aug_targets)  # for logging sample grids and for tests
        fr_step = self.is_fr_step()

        if self.total_steps % c.clean_every == 0:
            n = c.clean_batch or len(images)
            clean = self.trainer.evaluate_batch(images[:n], targets[:n]).loss
            self.loss_clean = clean if self.total_steps == 0 else c.ema * self.loss_clean + (1 - c.ema) * clean
        if fr_step:
            stats = self.trainer.step(aug_images, aug_targets)
            self._clean_heldout = None
            self.grad_norm = stats.grad_norm
        else:
            stats = self.trainer.evaluate_batch(aug_images, aug_targets)
        loss_aug = stats.loss
        entropy = float(-(aug_targets * aug_targets.clamp_min(1e-12).log()).sum(1).mean())
        excess = loss_aug - entropy

        if c.reward_scale == "relative":
            adv = float(np.clip((excess - self.loss_clean) / max(self.loss_clean, 1e-2), -5.0, 5.0))
        elif c.reward_scale == "zscore":
            # running mean/var, exact while fewer than 1 / (1 - ema) samples were seen, then an EMA
            adv = 0.0 if self.aug_count < 2 else float(
                np.clip((excess - self.aug_mean) / math.sqrt(self.aug_var + 1e-6), -5.0, 5.0))
        else:
            adv = excess
        self.aug_count += 1
        w = max(1.0 - c.ema, 1.0 / self.aug_count)
        delta = excess - self.aug_mean
        self.aug_mean += w * delta
        self.aug_var = (1.0 - w) * (self.aug_var + w * delta * delta)
        self.loss_aug = c.ema * self.loss_aug + (1 - c.ema) * loss_aug
        self.acc_train = c.ema * self.acc_train + (1 - c.ema) * stats.accuracy

        self.total_steps += 1
        self.episode_step += 1
        if c.val_every and self.total_steps % c.val_every == 0:
            self.acc_val = self._validate()
        if self.probe is not None and c.probe_every and self.total_steps % c.probe_every == 0:
            self.probe_top1 = float(self.probe(self.trainer.model))
        utility = -c.utility_weight * max(0.0, c.acc_budget - self.acc_val)
        acc_preserve = self._preserve_score(stats.accuracy, params)
        preserve = -c.preserve_weight * max(0.0, c.preserve_budget - acc_preserve)
        privacy = -c.privacy_weight * self.probe_top1
        deploy = 0.0 if c.deploy_price is None else c.deploy_price.penalty(getattr(params, c.deploy_price.param))
        reward = adv + utility + preserve + privacy + deploy
        self.last_action = action
        info = {"phase": "fr" if fr_step else "policy", "loss_aug": loss_aug, "loss_excess": excess,
                "target_entropy": entropy, "acc_aug": stats.accuracy, "acc_preserve": acc_preserve,
                "loss_clean": self.loss_clean, "grad_norm": stats.grad_norm if fr_step else 0.0, "acc_val": self.acc_val,
                "probe_top1": self.probe_top1, "reward_adv": adv, "reward_utility": utility,
                "reward_preserve": preserve, "reward_privacy": privacy, "reward_deploy": deploy, "params": asdict(params),
                "global_step": self.total_steps}
        truncated = self.episode_step >= c.episode_steps
        return self._obs(), float(reward), False, truncated, info
