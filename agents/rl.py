"""The SB3 side of veil: algorithms by name, SB3's logger writing to MLflow, small callbacks with
one job each (reward terms and chosen parameters, FR evaluation, atomic checkpoints, progress),
and the baseline policies (none, fixed, random) run through the same environment."""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecNormalize

from veil.env.actions import ACTION_DIM, PARAM_NAMES
from veil.env.face_augment import REWARD_TERMS
from veil.recognition.io import atomic_torch_save
from veil.recognition.progress import progress_bar

from . import tracking

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC, "td3": TD3, "a2c": A2C}


class MLflowOutputFormat(KVWriter):
    """SB3 logger output that sends every numeric record to the active MLflow run in one batch.

    SB3's ``time/fps`` is an integer, 0 for a game slower than one step a second (each step trains
    the FR model on a batch); it is replaced by ``rate()`` (steps per second, a float) when given,
    else left out."""

    def __init__(self, rate: Callable[[], float | None] | None = None) -> None:
        self.rate = rate

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        numeric = {}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "mlflow" in excluded:
                continue
            if key == "time/fps":
                value = self.rate() if self.rate is not None else None
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                numeric[key.replace("/", ".")] = float(value)
        if numeric:
            tracking.log_metrics(numeric, step=step)

    def close(self) -> None:
        pass


def mlflow_logger(rate: Callable[[], float | None] | None = None) -> Logger:
    """SB3's logger writing to MLflow; ``rate`` gives ``time.fps`` (see ``MLflowOutputFormat``)."""
    return Logger(folder=None, output_formats=[MLflowOutputFormat(rate)])


class EnvTermsCallback(BaseCallback):
    """Averages every reward term, FR statistic and decoded parameter from ``info`` over windows
    of ``every`` steps and logs them to MLflow (``env.*`` and ``action.*``), but the terms in
    ``skip`` (those of a game that does not play them, ``unplayed_terms``); keeps the history
    for the parameter plot."""

    def __init__(self, every: int = 64, skip: frozenset[str] | set[str] = frozenset()) -> None:
        super().__init__()
        self.every, self.skip = every, frozenset(skip)
        self._window: dict[str, list[float]] = defaultdict(list)
        self.history: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            for key in ("loss_aug", "acc_aug", "acc_preserve", "loss_clean", "acc_val", "probe_top1", "grad_norm",
                        "loss_excess", *REWARD_TERMS):
                if key in info and key not in self.skip:
                    self._window[f"env.{key}"].append(float(info[key]))
            for name, value in info.get("params", {}).items():
                self._window[f"action.{name}"].append(float(value))
        if self.num_timesteps % self.every < max(1, self.training_env.num_envs) and self._window:
            self._flush()
        return True

    def _flush(self) -> None:
        means = {k: float(np.mean(v)) for k, v in self._window.items() if v}
        stds = {f"{k}_std": float(np.std(v)) for k, v in self._window.items() if v and k.startswith("action.")}
        tracking.log_metrics({**means, **stds}, step=self.num_timesteps)
        self.history.append({"step": float(self.num_timesteps), **means})
        self._window.clear()

    def _on_training_end(self) -> None:
        if self._window:
            self._flush()


def unplayed_terms(probe_every: int, deploy_price: Any = None) -> frozenset[str]:
    """The ``info`` terms that are a constant 0 in a game without them, so not logged: the probe's
    top-1 and the privacy reward when the probe is off, the deployment price when none is charged."""
    out = set()
    if not probe_every:
        out |= {"probe_top1", "reward_privacy"}
    if deploy_price is None:
        out.add("reward_deploy")
    return frozenset(out)


class FREvalCallback(BaseCallback):
    """Every ``every`` steps: clean top-1 of the (first) env's FR model on the private test split."""

    def __init__(self, evaluate, every: int = 512) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.every = every
        self.last: dict[str, float] = {}

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every < max(1, self.training_env.num_envs):
            self.last = self.evaluate()
            tracking.log_metrics({f"fr.{k}": v for k, v in self.last.items()}, step=self.num_timesteps)
        return True


class AtomicCheckpointCallback(BaseCallback):
    """Every ``every`` steps, save the agent to ``path`` via a temporary file and a rename."""

    def __init__(self, path: str | Path, every: int = 1024) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = every

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".zip", dir=self.path.parent)
        os.close(fd)
        try:
            self.model.save(tmp)
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every < max(1, self.training_env.num_envs):
            self.save()
        return True

    def _on_training_end(self) -> None:
        self.save()


class ProgressCallback(BaseCallback):
    """Progress over the timesteps with the latest mean reward: a tqdm bar on a terminal, a line
    every ``$VEIL_PROGRESS_SECONDS`` in a log (``progress_bar``); ``rate()`` is the steps per
    second of this process's learning so far."""

    def __init__(self, total: int, done: int = 0) -> None:
        super().__init__()
        self.total, self.done = total, done
        self.bar: Any = None
        self._rewards: deque[float] = deque(maxlen=64)
        self._t0: float | None = None
        self._start_steps = 0

    def _on_training_start(self) -> None:
        self.bar = progress_bar(total=self.total, initial=self.done, desc="train-agent", unit="step",
                                dynamic_ncols=True)
        self._t0, self._start_steps = time.perf_counter(), self.num_timesteps

    def rate(self) -> float | None:
        """Agent steps per second since learning started in this process (None before a step)."""
        if self._t0 is None or self.num_timesteps <= self._start_steps:
            return None
        return (self.num_timesteps - self._start_steps) / max(time.perf_counter() - self._t0, 1e-9)

    def _on_step(self) -> bool:
        self._rewards.extend(float(r) for r in self.locals.get("rewards", []))
        if self.bar is not None:
            if self.n_calls % 16 == 0 and self._rewards:
                self.bar.set_postfix(reward=f"{np.mean(self._rewards):+.3f}", refresh=False)
            self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def baseline_action(kind: str, rng: np.random.Generator, fixed: np.ndarray | None = None) -> np.ndarray:
    """Actions of the baseline policies: ``none`` (k=1, p=0: no augmentation), ``fixed`` (the
    given action), ``random`` (uniform in [-1, 1]^8)."""
    if kind == "none":
        return -np.ones(ACTION_DIM, dtype=np.float32)
    if kind == "fixed":
        if fixed is None:
            raise ValueError("the fixed baseline needs an action")
        return np.asarray(fixed, dtype=np.float32)
    if kind == "random":
        return rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
    raise ValueError(f"unknown baseline policy {kind!r}; choose none, fixed or random")


UNCOMMITTED_STD = 0.5
"""Action std above which a Gaussian policy on the [-1, 1] box has not committed: a uniform draw on
the box has std 0.58, so the game's FR model trained under near-random augmentation, not under
the policy's mean action."""


def action_spread(agent: BaseAlgorithm, fixed: dict[str, float] | None = None) -> dict[str, float] | None:
    """The std of each action parameter the agent chooses (those not ``fixed``), from a PPO/A2C
    agent's state-independent ``log_std``; ``None`` for agents without one (SAC, TD3)."""
    log_std = getattr(agent.policy, "log_std", None)
    if log_std is None:
        return None
    std = log_std.detach().exp().cpu().numpy().reshape(-1)
    return {name: float(std[i]) for i, name in enumerate(PARAM_NAMES) if name not in (fixed or {})}


def commitment_warning(spread: dict[str, float] | None, threshold: float = UNCOMMITTED_STD) -> str | None:
    """A warning when the agent's mean action std over the parameters it chooses is above
    ``threshold``: the exported mean action is then one point of a near-random exploration
    distribution, and the game's FR model (and its probe) saw that distribution, not the point."""
    if not spread:
        return None
    mean = float(np.mean(list(spread.values())))
    if mean <= threshold:
        return None
    widest = max(spread, key=spread.get)
    return (f"warning: the agent did not commit: its action std is {mean:.2f} on average over the "
            f"{len(spread)} parameters it chooses (widest: {widest} {spread[widest]:.2f}; a uniform draw on the "
            f"[-1, 1] box has 0.58). The game trained its FR model under near-random augmentation, so the "
            f"game's accuracy and probe describe that, not the exported mean action. Start narrower "
            f"(--log-std-init -1), drop the entropy bonus (--ent-coef 0) or train longer (--timesteps).")


GAME_FORMAT = "veil-game-1"


def _numpy_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng(s: dict[str, Any]) -> None:
    np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def game_checkpoint(agent: BaseAlgorithm, terms: EnvTermsCallback, fr_eval: FREvalCallback,
                    options: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The whole game at a rollout boundary (the rollout buffer is empty there): the agent's
    network and optimizer, its counters and last observation, reward normalization, every env's
    game, the callbacks' windows and history, and the RNG states; tensors and plain values only,
    so it loads weights-only."""
    vec = agent.get_env()
    state: dict[str, Any] = {
        "format": GAME_FORMAT, "options": options, "run_id": run_id, "num_timesteps": int(agent.num_timesteps),
        "n_updates": int(getattr(agent, "_n_updates", 0)), "episode_num": int(agent._episode_num),
        "policy": agent.policy.state_dict(), "optimizer": agent.policy.optimizer.state_dict(),
        "last_obs": torch.from_numpy(np.asarray(agent._last_obs).copy()),
        "last_episode_starts": torch.from_numpy(np.asarray(agent._last_episode_starts).copy()),
        "envs": vec.env_method("game_state"),
        "terms": {"window": {k: list(v) for k, v in terms._window.items()}, "history": list(terms.history)},
        "fr_eval": dict(fr_eval.last),
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng(), "random": random.getstate()},
    }
    if isinstance(vec, VecNormalize):
        state["vecnormalize"] = {"mean": torch.from_numpy(np.asarray(vec.ret_rms.mean, dtype=np.float64).copy()),
                                 "var": torch.from_numpy(np.asarray(vec.ret_rms.var, dtype=np.float64).copy()),
                                 "count": float(vec.ret_rms.count),
                                 "returns": torch.from_numpy(np.asarray(vec.returns, dtype=np.float64).copy()),
                                 "old_reward": torch.from_numpy(np.asarray(vec.old_reward, dtype=np.float64).copy())}
    return state


def restore_game(agent: BaseAlgorithm, state: dict[str, Any], terms: EnvTermsCallback,
                 fr_eval: FREvalCallback) -> None:
    """Put a freshly built agent, its envs and callbacks where ``game_checkpoint`` found them; the
    RNG states last, so the next draw is the one the interrupted run would have made."""
    vec = agent.get_env()
    agent.policy.load_state_dict(state["policy"])
    agent.policy.optimizer.load_state_dict(state["optimizer"])
    agent.num_timesteps = state["num_timesteps"]
    agent._n_updates = state["n_updates"]
    agent._episode_num = state["episode_num"]
    agent._last_obs = state["last_obs"].numpy().copy()
    agent._last_episode_starts = state["last_episode_starts"].numpy().copy()
    for i, env_state in enumerate(state["envs"]):
        vec.env_method("set_game_state", env_state, indices=i)
    if isinstance(vec, VecNormalize) and "vecnormalize" in state:
        norm = state["vecnormalize"]
        vec.ret_rms.mean, vec.ret_rms.var = norm["mean"].numpy().copy(), norm["var"].numpy().copy()
        vec.ret_rms.count = norm["count"]
        vec.returns, vec.old_reward = norm["returns"].numpy().copy(), norm["old_reward"].numpy().copy()
    terms._window.clear()
    terms._window.update({k: list(v) for k, v in state["terms"]["window"].items()})
    terms.history[:] = state["terms"]["history"]
    fr_eval.last = dict(state["fr_eval"])
    torch.set_rng_state(state["rng"]["torch"])
    _set_numpy_rng(state["rng"]["numpy"])
    random.setstate(state["rng"]["random"])


class GameCheckpointCallback(BaseCallback):
    """At the first rollout boundary after every ``every`` steps, write the whole game
    (``game_checkpoint``) atomically to ``path``, so ``veil train-agent --resume`` continues it."""

    def __init__(self, path: str | Path, every: int, make_state) -> None:
        super().__init__()
        self.path, self.every, self.make_state = Path(path), every, make_state
        self.saved_at = 0

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self.saved_at >= self.every and self.num_timesteps > 0:
            atomic_torch_save(self.make_state(), self.path)
            self.saved_at = self.num_timesteps

    def _on_step(self) -> bool:
        return True
