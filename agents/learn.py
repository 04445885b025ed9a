"""``veil learn-schedule``: learn an augmentation *schedule* over whole training runs.

Where ``veil train-agent`` plays the per-batch adversarial game and deploys its policy's mean on
a fresh model, this learner's episodes are deployments (``veil.env.FaceScheduleEnv``): a fresh
FR model trained for the plan's budget on the validation split, one action per segment, the
reward at the end the deployed objective (minus the PCA probe's top-1, minus a penalty for
validation accuracy lost beyond the race's budget). PPO (SB3) or population-based training (Ray
Tune, ``veil.agents.pbt``) learn; the found schedule is written as a schedule file that
``veil train-fr --augment-schedule`` and a plan row ``use = "schedule"`` replay exactly. A plan
names each learner in a ``[learn.NAME]`` table (``LearnPlan``) beside its ``[race]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from veil.attacks.evaluation import EvalModelConfig, train_eval_model
from veil.attacks.harness import HarnessConfig, run_attack
from veil.attacks.settings import AttackSettings
from veil.defenses.params import AugmentParams
from veil.env.schedule_game import FaceScheduleEnv, ScheduleGameConfig, schedule_of
from veil.recognition import DeviceConfig, FaceSplit, load_faces, split_identities
from veil.recognition.device import as_device_config

from . import tracking
from .attack_cli import attack_settings
from .benchmark import read_cells
from .cluster import ClusterConfig
from .options import add_device_args, add_population_cluster_args, add_tracking_args, cluster_config, device_config
from .plan import LearnPlan, Plan, calibration_plan, centre_params, load_plan
from .race import race_box
from .schedules import save_schedule
from .train_fr import Tracking


def pca_probe(model: nn.Module, split: FaceSplit, seed: int, *, eval_model: nn.Module, settings: AttackSettings,
              identities: int, attack_seeds: int) -> float:
    """The PCA attack's top-1 on a finished target, scored as a race's validation cell scores it."""
    report = run_attack("pca", model, split, eval_model, HarnessConfig(identities=identities, attack_seeds=attack_seeds,
                                                                       settings=settings, seed=seed), progress=False)
    return float(report.summary["top1"])


def segment_reward(env: FaceScheduleEnv) -> float:
    """PBT's score at a segment end: the deployed objective measured on the model so far (the
    probe's top-1, the accuracy lost beyond the budget), so members are exploited on privacy too."""
    acc = float(env.trainer.history[-1]["test_top1"]) if env.trainer and env.trainer.history else 0.0
    top1 = float(env.probe(env.model, env.split, env.run_seed)) if env.probe else 0.0
    return env.config.reward(acc, top1)[0]


def game_config(plan: Plan, learn: LearnPlan, acc_reference: float) -> ScheduleGameConfig:
    """The whole-run game a learner plays: the plan's data and budget, the race's box with only
    ``learn.free`` left to choose (the rest at the box's centre, as C1's grid and C3's schedules)."""
    r = plan.race
    if r is None:
        raise ValueError("learn-schedule plays inside a race's box: the plan needs a [race] table")
    box = race_box(r)
    unknown = [p for p in learn.free if p not in box.ranges or p in r.fix]
    if unknown:
        raise ValueError(f"learn: free parameter {unknown[0]!r} is not one of the race box's free parameters "
                         f"({', '.join(k for k in r.box if k not in r.fix)})")
    centre = asdict(replace(centre_params(r.fix), label_follow=r.fix.get("label_follow", 0.0)))
    fixed = {k: float(v) for k, v in centre.items() if k not in learn.free}
    bounds = {k: tuple(box.ranges[k]) for k in learn.free}
    return ScheduleGameConfig(data=plan.data, split=plan.split, model=plan.budget.model, epochs=plan.budget.epochs,
                              batch_size=plan.budget.batch_size, lr=plan.budget.lr, segments=learn.segments,
                              fixed_params=fixed, param_bounds=bounds, acc_reference=acc_reference,
                              budget=r.budget, penalty=learn.penalty, seed=learn.seed)


def reference_accuracy(plan: Plan, learn: LearnPlan) -> float:
    """``learn.acc_reference``, or the mean validation top-1 of C1's undefended cells."""
    if learn.acc_reference > 0:
        return learn.acc_reference
    if plan.race is None or not plan.race.calibration:
        raise ValueError("learn: give acc_reference, or a race whose calibration folder has none cells")
    calib = calibration_plan(load_plan(Path(plan.race.calibration) / "plan.toml"))
    none = read_cells(Path(calib.out_dir), {"none"}, set(plan.race.validation_seeds))
    if not none:
        raise ValueError(f"learn: no none cells in {calib.out_dir}/cells to take the reference accuracy from")
    return float(np.mean([c["natural_top1"] for c in none]))


class EpisodeLog(BaseCallback):
    """Records each finished episode (seed, settings per segment, accuracy, probe, reward), logs
    it to MLflow and prints one line, so a long learning run shows where it is."""

    def __init__(self, episodes: int) -> None:
        super().__init__()
        self.episodes, self.history, self.t0 = episodes, [], time.perf_counter()

    def _on_step(self) -> bool:
        for info, done in zip(self.locals.get("infos", []), self.locals.get("dones", [])):
            if done and "probe_top1" in info:
                self.history.append(episode_record(info, info["segment_params"]))
                log_episode(self.history[-1], len(self.history), self.episodes, self.t0)
        return True


def episode_record(info: dict[str, Any], params: list[AugmentParams]) -> dict[str, Any]:
    return {"seed": info["seed"], "acc_val": info["acc_val"], "probe_top1": info["probe_top1"], "drop": info["drop"],
            "reward": info["reward_privacy"] + info["reward_utility"], "params": [asdict(p) for p in params]}


def log_episode(e: dict[str, Any], n: int, total: int, t0: float) -> None:
    tracking.log_metrics({"episode.reward": e["reward"], "episode.acc_val": e["acc_val"],
                          "episode.probe_top1": e["probe_top1"],
                          **{f"episode.radius.{i}": p["radius"] for i, p in enumerate(e["params"])}}, step=n)
    elapsed = time.perf_counter() - t0
    print(f"episode {n}/{total} (seed {e['seed']}): validation top-1 {e['acc_val']:.1%}, probe {e['probe_top1']:.1%}, "
          f"reward {e['reward']:+.3f}; radius " + " -> ".join(f"{p['radius']:.3g}" for p in e["params"])
          + f" [{elapsed / 60:.0f} min, about {elapsed / n * (total - n) / 60:.0f} min left]", flush=True)


def learn_ppo(game: ScheduleGameConfig, split: FaceSplit, probe: Any, learn: LearnPlan) -> tuple[list[AugmentParams],
                                                                                                  list[dict]]:
    """PPO over whole-run episodes (discount 1: the reward comes at the end); the deterministic
    policy's setting per segment is the schedule."""
    env = FaceScheduleEnv(game, split=split, probe=probe)
    n_steps = learn.segments * learn.ppo_episodes_per_update
    algo = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=n_steps, n_epochs=10, gamma=1.0, gae_lambda=1.0,
               learning_rate=learn.ppo_lr, ent_coef=0.0, seed=learn.seed,
               device=as_device_config(game.device).resolve(), verbose=0,
               policy_kwargs={"net_arch": [32, 32], "log_std_init": learn.ppo_log_std_init})
    log = EpisodeLog(learn.episodes)
    algo.learn(total_timesteps=learn.episodes * learn.segments, callback=log)
    actions = [algo.predict(game.observation(i), deterministic=True)[0] for i in range(learn.segments)]
    return [game.codec.decode(a) for a in actions], log.history


def learn_schedule(plan: Plan, name: str, track: Tracking, device: DeviceConfig = DeviceConfig(device="cpu"),
                   cluster: ClusterConfig = ClusterConfig()) -> Path:
    """Run the learner ``[learn.NAME]`` of ``plan`` and write its schedule (and a JSON record beside it); the
    FR runs, the evaluation model and the probe run on ``device``; PBT's members on ``cluster``."""
    if name not in plan.learn:
        raise ValueError(f"the plan has no [learn.{name}] table (it has: {', '.join(plan.learn) or 'none'})")
    learn = plan.learn[name]
    if cluster.address not in (None, "local") and learn.learner != "pbt":
        raise ValueError(f"--ray runs a population's members; [learn.{name}] is {learn.learner}, which plays one "
                         "episode after another in this process (drop --ray)")
    torch.set_num_threads(plan.budget.threads or torch.get_num_threads())
    # the resolved device with the speed options (AMP, channels-last, compile) for every run's FR model
    game = replace(game_config(plan, learn, reference_accuracy(plan, learn)),
                   device=replace(device, device=str(device.resolve())))
    split = split_identities(load_faces(game.data), game.split)
    ev = train_eval_model(split, EvalModelConfig(epochs=plan.attacks.eval_epochs), device=device)
    probe = functools.partial(pca_probe, eval_model=ev.model, settings=attack_settings(plan.attacks),
                              identities=plan.attacks.identities, attack_seeds=plan.attacks.attack_seeds)
    out = Path(learn.out)
    print(f"learn-schedule {name}: {learn.learner}, {learn.episodes} episodes of {game.epochs} epochs in "
          f"{game.segments} segments; free {', '.join(learn.free)}; reference validation top-1 "
          f"{game.acc_reference:.1%}, budget {game.budget:g} points")
    tracking.setup(track.uri, track.experiment)
    t0 = time.perf_counter()
    with tracking.start_run(run_name=track.run_name or f"learn-{name}") as run:
        mlflow.set_tags({"veil.kind": "learn-schedule", "veil.learner": learn.learner})
        tracking.log_params({"learn": asdict(learn), "game": {k: v for k, v in asdict(game).items()
                                                              if k not in ("data", "split")}})
        if learn.learner == "ppo":
            params, history = learn_ppo(game, split, probe, learn)
            fr_runs = float(learn.episodes)
        else:
            from .pbt import PBTConfig, pbt_search  # Ray is an optional extra (pip install veil[pbt])

            result = pbt_search(game, split, probe, PBTConfig(population=learn.episodes, seed=learn.seed,
                                                              max_concurrent=learn.concurrent),
                                segment_score=segment_reward, cluster=cluster)
            params, history, fr_runs = result.params, result.members, result.fr_runs
        schedule = schedule_of(game, params)
        note = (f"learned by veil learn-schedule ({learn.learner}, {learn.episodes} episodes, plan [learn.{name}]): "
                "radius " + " -> ".join(f"{p.radius:.3g}" for p in params))
        save_schedule(schedule, out, note)
        record = {"name": name, "learner": learn.learner, "fr_runs": fr_runs, "seconds": time.perf_counter() - t0,
                  "reference_acc": game.acc_reference, "schedule": schedule.to_dict(), "episodes": history,
                  "mlflow_run": run.info.run_id}
        out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=float))
        tracking.log_file(out, "schedule")
        tracking.log_file(out.with_suffix(".json"), "schedule")
    print(f"schedule: {out} ({note}); {fr_runs:g} FR runs, {(time.perf_counter() - t0) / 60:.0f} min")
    return out


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    learn_schedule(plan, args.name, Tracking(args.tracking_uri, args.experiment, args.run_name), device_config(args),
                   cluster_config(args))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil learn-schedule`` sub-command."""
    c = sub.add_parser("learn-schedule", help="learn an augmentation schedule over whole training runs (PPO or PBT)",
                       description="Play whole FR training runs as episodes (one action per segment, rewarded at "
                                   "the end with the validation PCA probe and the accuracy lost beyond the race's "
                                   "budget) with the learner of a plan's [learn.NAME] table, and write the found "
                                   "schedule file, which veil train-fr --augment-schedule replays exactly.")
    c.add_argument("--config", required=True, metavar="PLAN.toml", help="a race plan with [learn.NAME] tables")
    c.add_argument("--name", required=True, help="which [learn.NAME] to run")
    add_device_args(c)
    add_population_cluster_args(c)
    add_tracking_args(c)
    c.set_defaults(handler=run)
