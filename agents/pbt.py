"""Population-based training (Ray Tune's PBT) over the schedule game: a second learner beside PPO.

Each member of the population is one whole FR training run (``veil.env.FaceScheduleEnv``) whose
hyperparameters are one action in [-1, 1]^8 (config keys ``a0`` .. ``a7``). A training iteration
is one segment. At every segment end the members report a score and a checkpoint (the run's
``game_state``); the bottom ``quantile`` then *exploit*: they continue a top member's run (its FR
model, optimizer, schedule draws and settings so far) and *explore*: they play the donor's action
moved by +-``perturb`` per coordinate (or redrawn with ``resample_probability``), clipped to
[-1, 1], for the next segment. Exploit copies rather than retrains, so the search costs one FR run
per member. The found schedule is the best final member's settings per segment, its lineage.

Intermediate exploitation ranks members by ``segment_score(env)`` when given, else by validation
top-1 alone (the deployed objective needs the privacy probe, which only the finished model gets);
the last segment reports the env's reward, the deployed objective, and is never exploited.

Ray is an optional extra: ``pip install veil[pbt]``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from veil.defenses.params import AugmentParams
from veil.env.actions import ACTION_DIM
from veil.env.schedule_game import FaceScheduleEnv, ScheduleGameConfig, ScheduleProbe
from veil.recognition import FaceSplit
from veil.recognition.device import as_device_config

from .cluster import ClusterConfig, worker_env

SegmentScore = Callable[[FaceScheduleEnv], float]
"""The score a member reports at an intermediate segment end (higher is better), from its env."""

ACTION_KEYS = tuple(f"a{d}" for d in range(ACTION_DIM))
"""The trial config keys of the action's dimensions."""

GAME_FILE, MEMBER_FILE = "game.pt", "member.json"


@dataclass(frozen=True)
class PBTConfig:
    """The population and its exploit/explore rule.

    Args:
        population: members, each one FR training run.
        seed: seeds the members' initial actions (uniform in [-1, 1]^8), the explore steps and
            the choice among the top members; member i's FR run has seed ``game.seed + i``.
        quantile: PBT's ``quantile_fraction``: the bottom share that exploits the top share.
        resample_probability: per coordinate, the chance that explore redraws it uniformly.
        perturb: otherwise explore moves the coordinate by +-perturb in action space, clipped.
        max_concurrent: members training at once (one CPU and one torch thread each).
    """

    population: int = 6
    seed: int = 0
    quantile: float = 0.25
    resample_probability: float = 0.25
    perturb: float = 0.2
    max_concurrent: int = 2

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"pbt: population must be >= 2 (a member exploits another), got {self.population}")
        if not 0.0 < self.quantile <= 0.5:
            raise ValueError(f"pbt: quantile must be in (0, 0.5], got {self.quantile}")
        if not 0.0 <= self.resample_probability <= 1.0:
            raise ValueError(f"pbt: resample_probability must be in [0, 1], got {self.resample_probability}")
        if not (math.isfinite(self.perturb) and self.perturb >= 0):
            raise ValueError(f"pbt: perturb must be a finite number >= 0, got {self.perturb}")
        if self.max_concurrent < 1:
            raise ValueError(f"pbt: max_concurrent must be >= 1, got {self.max_concurrent}")


@dataclass
class PBTResult:
    """What PBT found: the best final member's settings per segment and its reward, every member's
    record (``reward``, ``acc_val``, ``probe_top1``, ``params``, ``lineage``, ``played_by``), and the
    compute spent in whole FR training runs."""

    params: list[AugmentParams]
    score: float
    members: list[dict[str, Any]] = field(default_factory=list)
    fr_runs: float = 0.0


class SeededPBT(PopulationBasedTraining):
    """Ray's PBT with explore in action space and every random choice drawn from ``seed``.

    Ray's own explore multiplies a value by 0.8 or 1.2, which never changes the sign of an action
    coordinate; here each coordinate moves by +-``perturb`` (or is redrawn), clipped to [-1, 1].
    The exploiting trial keeps its own ``member`` key, so a member knows who it is after a copy."""

    def __init__(self, *, seed: int, perturb: float, resample_probability: float, **kwargs: Any) -> None:
        super().__init__(resample_probability=resample_probability, **kwargs)
        self._rng = np.random.default_rng([seed, 1])
        self._choice_state = random.Random(seed).getstate()
        self._perturb, self._resample = float(perturb), float(resample_probability)

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        config = copy.deepcopy(trial_to_clone.config)
        operations: dict[str, str] = {}
        for key in ACTION_KEYS:
            if self._rng.random() < self._resample:
                config[key] = float(self._rng.uniform(-1.0, 1.0))
                operations[key] = "resample"
            else:
                step = self._perturb * float(self._rng.choice([-1.0, 1.0]))
                config[key] = float(np.clip(config[key] + step, -1.0, 1.0))
                operations[key] = f"{step:+g}"
        config["member"] = trial.config["member"]
        return config, operations

    def _checkpoint_or_exploit(self, *args: Any, **kwargs: Any) -> None:
        # Ray picks the donor with the global `random`: draw it from this scheduler's own stream.
        outer = random.getstate()
        random.setstate(self._choice_state)
        try:
            super()._checkpoint_or_exploit(*args, **kwargs)
        finally:
            self._choice_state = random.getstate()
            random.setstate(outer)


def initial_actions(config: PBTConfig) -> np.ndarray:
    """The members' first actions, ``(population, 8)`` uniform in [-1, 1], from ``config.seed``."""
    return np.random.default_rng([config.seed, 0]).uniform(-1.0, 1.0, (config.population, ACTION_DIM))


def _initial_value(table: np.ndarray, dim: int, spec: Any) -> float:
    """``sample_from`` resolver: member ``spec.config.member``'s initial coordinate ``dim``."""
    return float(table[int(spec.config.member)][dim])


def play_member(config: dict[str, Any], *, game: ScheduleGameConfig, split: FaceSplit,
                probe: ScheduleProbe | None, segment_score: SegmentScore | None) -> None:
    """One member (a Ray Tune function trainable): train segment after segment of its FR run with
    the action in ``config``, reporting a score and a checkpoint after each; after an exploit it
    resumes the donor's run from the donor's checkpoint and records the copy in its lineage."""
    torch.set_num_threads(1)
    member = int(config["member"])
    env = FaceScheduleEnv(game, split=split, probe=probe)
    env.reset(seed=game.seed + member)
    lineage: list[dict[str, int]] = []
    played_by: list[int] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / GAME_FILE, map_location="cpu", weights_only=True)
            meta = json.loads((Path(d) / MEMBER_FILE).read_text())
        env.set_game_state(state)
        lineage, played_by = list(meta["lineage"]), list(meta["played_by"])
        if int(meta["member"]) != member:  # exploit: this member continues the donor's run
            lineage.append({"segment": len(env.params), "member": int(meta["member"])})
    action = np.array([float(config[k]) for k in ACTION_KEYS])
    while len(env.params) < game.segments:
        _, reward, done, _, info = env.step(action)
        played_by.append(member)
        if done:
            score = float(reward)
        else:
            score = float(segment_score(env)) if segment_score is not None else float(info["acc_val"])
        metrics: dict[str, Any] = {"score": score, "member": member, "segment": int(info["segment"]),
                                   "acc_val": float(info["acc_val"]), "final": done}
        if done:
            metrics.update(reward=float(reward), probe_top1=float(info["probe_top1"]))
        meta = {"member": member, "lineage": lineage, "played_by": played_by,
                "params": [asdict(p) for p in env.params], "action": action.tolist()}
        with tempfile.TemporaryDirectory() as d:
            torch.save(env.game_state(), Path(d) / GAME_FILE)
            (Path(d) / MEMBER_FILE).write_text(json.dumps(meta))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _worker_pythonpath() -> str:
    """The driver's own import paths (a checkout, tests, scripts), so that a probe defined in a
    module outside the installed packages unpickles in Ray's workers too."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = [p for p in sys.path if p and os.path.isdir(p)
           and not any(os.path.realpath(p).startswith(pre) for pre in prefixes)]
    return os.pathsep.join(dict.fromkeys(own))


def pbt_search(game: ScheduleGameConfig, split: FaceSplit, probe: ScheduleProbe | None,
               config: PBTConfig = PBTConfig(), segment_score: SegmentScore | None = None,
               progress: bool = True, cluster: ClusterConfig = ClusterConfig()) -> PBTResult:
    """Search a schedule with population-based training over ``game`` (see the module docstring).

    ``probe`` and ``segment_score`` run inside Ray's workers, so they must pickle: a module-level
    function or a ``functools.partial`` of one. Unless Ray is already running, starts a local Ray
    with ``max_concurrent`` CPUs, or connects to the cluster at ``cluster.address`` (its ``local``
    is the same as none), and shuts it down after; the members' checkpoints go to
    ``cluster.storage`` or a temporary folder."""
    if split.kind != "validation":
        raise ValueError("pbt_search scores on the validation split; pass a split made with validation=True")
    table = initial_actions(config)
    started = not ray.is_initialized()
    remote = cluster.address not in (None, "local")
    storage = cluster.storage or tempfile.mkdtemp(prefix="veil-pbt-")
    try:
        if started:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if remote:  # another machine's workers: veil installed there, the driver's VEIL_* settings
                ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR",
                         runtime_env={"env_vars": {**worker_env(), "OMP_NUM_THREADS": "1"}})
            else:
                ray.init(num_cpus=config.max_concurrent, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR",
                         runtime_env={"env_vars": {"PYTHONPATH": _worker_pythonpath(), "OMP_NUM_THREADS": "1"}})
        scheduler = SeededPBT(
            seed=config.seed, perturb=config.perturb, resample_probability=config.resample_probability,
            time_attr="training_iteration", perturbation_interval=1, metric="score", mode="max",
            hyperparam_mutations={k: tune.uniform(-1.0, 1.0) for k in ACTION_KEYS},
            quantile_fraction=config.quantile, synch=True)
        trainable = tune.with_resources(
            tune.with_parameters(play_member, game=game, split=split, probe=probe, segment_score=segment_score),
            {"cpu": 1, "gpu": cluster.task_gpus(str(as_device_config(game.device).resolve()))})
        space: dict[str, Any] = {"member": tune.grid_search(list(range(config.population)))}
        space.update({k: tune.sample_from(functools.partial(_initial_value, table, d)) for d, k in enumerate(ACTION_KEYS)})
        # No max_concurrent_trials: Tune counts paused members against it, so a synchronous
        # population larger than it would never meet at a segment end; Ray's CPUs bound concurrency.
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(num_samples=1, scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(
                # a search of its own in a shared store: never continues another search's trials
                name=f"pbt-{uuid.uuid4().hex[:12]}", storage_path=storage, verbose=1 if progress else 0,
                stop={"training_iteration": game.segments},  # the last segment is final, never exploited
                failure_config=tune.FailureConfig(max_failures=cluster.max_retries if remote else 0)))
        grid = tuner.fit()
        members = [_member_record(game, r) for r in grid]
    finally:
        if started:
            ray.shutdown()
        if not cluster.storage:
            shutil.rmtree(storage, ignore_errors=True)
    members.sort(key=lambda m: m["member"])
    best = max(members, key=lambda m: (m["reward"], -m["member"]))
    if progress:
        for m in members:
            print(f"pbt member {m['member']}: reward {m['reward']:+.3f}, validation top-1 {m['acc_val']:.1%}, "
                  f"probe {m['probe_top1']:.1%}; copied {m['lineage'] or 'nobody'}")
    return PBTResult(params=[AugmentParams(**p) for p in best["params"]], score=best["reward"], members=members,
                     fr_runs=float(config.population))


def _member_record(game: ScheduleGameConfig, result: Any) -> dict[str, Any]:
    """A finished trial as a member record, from its last metrics and checkpoint."""
    if result.error is not None:
        raise RuntimeError(f"pbt: a member failed: {result.error}") from result.error
    m = result.metrics
    if not m.get("final") or result.checkpoint is None:
        raise RuntimeError(f"pbt: member {m.get('member')} stopped before its last segment ({m.get('segment')})")
    with result.checkpoint.as_directory() as d:
        meta = json.loads((Path(d) / MEMBER_FILE).read_text())
    if len(meta["params"]) != game.segments:
        raise RuntimeError(f"pbt: member {meta['member']} played {len(meta['params'])} of {game.segments} segments")
    return {"member": int(meta["member"]), "reward": float(m["reward"]), "acc_val": float(m["acc_val"]),
            "probe_top1": float(m["probe_top1"]), "params": meta["params"], "lineage": meta["lineage"],
            "played_by": meta["played_by"], "action": meta["action"]}
