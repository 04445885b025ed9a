"""``veil train-agent``: train the augmentation policy on ``FaceAugmentEnv`` with SB3, tracked in
MLflow, and export it; or run a baseline policy (none, fixed, random) through the same env."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from veil.attacks import PrivacyProbe, ProbeConfig
from veil.attacks.evaluation import EvalModelConfig, train_eval_model
from veil.env import DeployPrice, EnvConfig, FaceAugmentEnv
from veil.env.actions import full_action
from veil.env.face_augment import REWARD_TERMS
from veil.recognition import load_faces, split_identities
from veil.recognition.progress import progress_bar

from . import tracking
from .export import export_policy
from .options import (
    DEVICE_FLAGS,
    EPILOG_DATA,
    add_data_args,
    add_device_args,
    add_tracking_args,
    count,
    data_configs,
    device_config,
)
from .registry import log_policy_model, registered_name
from .rl import (
    ALGOS,
    GAME_FORMAT,
    PARAM_NAMES,
    AtomicCheckpointCallback,
    EnvTermsCallback,
    FREvalCallback,
    GameCheckpointCallback,
    ProgressCallback,
    action_spread,
    baseline_action,
    commitment_warning,
    game_checkpoint,
    mlflow_logger,
    restore_game,
    unplayed_terms,
)
from .train_fr import data_record


def _plot_actions(history: list[dict[str, float]], path: Path) -> Path | None:
    """Chosen parameters (window means) across training, one panel per parameter."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(len(PARAM_NAMES), 1, figsize=(7, 1.6 * len(PARAM_NAMES)), sharex=True)
    for ax, name in zip(axes, PARAM_NAMES):
        ax.plot(steps, [h.get(f"action.{name}", math.nan) for h in history], lw=1.2)
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("agent timesteps")
    fig.suptitle("augmentation parameters chosen by the agent (window means)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_env_fn(env_cfg: Any, split: Any, rank: int, threads: int | None, probe: Any = None):
    def _make():


        if threads:
            torch.set_num_threads(threads)
        return FaceAugmentEnv(replace(env_cfg, seed=env_cfg.seed + 1000 * rank), split=split, probe=probe)
    return _make


def make_probe(args: Any, split: Any):
    """The privacy probe of ``--probe-every``: PCA-prior attack scored by the cached evaluation
    model (trained here the first time, which takes a few minutes), or ``None``."""
    if not getattr(args, "probe_every", 0):
        return None, None

    ev = train_eval_model(split, EvalModelConfig(epochs=args.eval_epochs, seed=args.seed), device=device_config(args))
    print(f"probe: evaluation model {ev.config.model} at {ev.metrics['top1']:.1%} private test top-1"
          f"{' (cached)' if ev.cached else ''}; {args.probe_identities} identities every {args.probe_every} steps")
    return PrivacyProbe(split, ev.model, ProbeConfig(identities=args.probe_identities, seed=args.seed)), ev


def run(args: Any) -> int:
    """CLI entry: train (or run a baseline) and return the exit code."""
    train(args)
    return 0


RESUMABLE = ("ppo", "a2c")  # on-policy: a rollout boundary holds no buffer, so the game checkpoint is small


def game_checkpoint_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}-game.pt"


def game_target_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}-game-fr.pt"


def save_game_target(save: Callable[[str, dict[str, Any]], Any], out_dir: str | Path, run_id: str,
                     env_cfg: EnvConfig, defense: str) -> Path:
    """Write the game's FR model (``save``: env 0's ``save_fr``) as a ``veil train-fr`` target
    checkpoint ``<out>/<run>-game-fr.pt``, recording the data, split and validation hold-out it was
    trained on, and log it as the run's ``game_target`` artifact: ``veil attack`` and a benchmark's
    ``use = "target"`` row score it."""
    path = game_target_path(out_dir, run_id)
    save(str(path), {"mlflow_run_id": run_id, "defense": {"names": defense},
                     **data_record(env_cfg.data, env_cfg.split), "val_fraction": env_cfg.val_fraction})
    tracking.log_file(path, "game_target")
    return path


def read_game(spec: str, out_dir: str) -> dict[str, Any]:
    """A game checkpoint, given as its file or its MLflow run ID (looked for in ``out_dir``); weights-only."""
    path = Path(spec) if Path(spec).is_file() else game_checkpoint_path(out_dir, spec)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {spec}: no game checkpoint {path} (train-agent writes one every "
                                "--checkpoint-every steps, for PPO and A2C)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any damage: one line, nothing trusted
        raise ValueError(f"--resume {path} is not a readable game checkpoint: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != GAME_FORMAT:
        raise ValueError(f"--resume {path} is not a veil game checkpoint")
    return state


def train(args: Any) -> Path | None:
    """Train the agent as ``args`` say; return the exported policy's path (``None`` for a baseline).
    With ``args.resume``, continue the game a checkpoint recorded, with the options it recorded."""
    resumed = None
    if getattr(args, "resume", None):
        resumed = read_game(args.resume, args.out_dir)
        kept = {k: getattr(args, k) for k in ("resume", "threads", *DEVICE_FLAGS)}  # how it runs, not what it plays
        args = argparse.Namespace(**{**resumed["options"], **kept})



    if not 0.0 <= args.gamma < 1.0:
        raise ValueError(f"--gamma must be in [0, 1), got {args.gamma}")
    for option in ("timesteps", "n_envs", "n_steps", "n_epochs"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if not 0 < args.policy_lr < math.inf:
        raise ValueError(f"--policy-lr must be a number > 0, got {args.policy_lr}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data_cfg, split_cfg = data_configs(args)
    split = split_identities(load_faces(data_cfg), split_cfg)
    env_cfg = EnvConfig(data=data_cfg, split=split_cfg, model=args.model, lr=args.lr, batch_size=args.batch_size,
                        episode_steps=args.episode_steps, horizon=args.timesteps // max(1, args.n_envs),
                        schedule=args.schedule, policy_steps=args.policy_steps, fr_steps=args.fr_steps,
                        k_max=args.k_max, mix_mode=args.mix_mode, **game_constraints(args),
                        acc_budget=args.acc_budget,
                        utility_weight=args.utility_weight, val_every=args.val_every,
                        reward_scale=args.reward_scale, preserve_budget=args.preserve_budget,
                        preserve_weight=args.preserve_weight, preserve_on=args.preserve_on,
                        warmup_steps=args.warmup_steps, reset_mode=args.reset_mode, probe_every=args.probe_every,
                        privacy_weight=args.privacy_weight, seed=args.seed, device=device_config(args))
    print(f"data: {split.num_private} private identities, {len(split.train_labels)} training images; "
          f"{args.n_envs} env(s), {args.algo if not args.baseline else 'baseline ' + args.baseline}")

    tracking.setup(args.tracking_uri, args.experiment)
    name = args.run_name or (f"agent-{args.algo}" if not args.baseline else f"baseline-{args.baseline}")
    out_dir = Path(args.out_dir)
    normalize_reward = bool(args.normalize_reward)
    if args.checkpoint_every and args.algo not in RESUMABLE and not args.baseline:
        print(f"note: {args.algo} keeps a replay buffer; its game is not checkpointed for --resume (PPO and A2C are)")
    with tracking.start_run(run_name=None if resumed else name, run_id=resumed["run_id"] if resumed else None,
                            continue_work=True) as run:
        mlflow.set_tags({"veil.kind": "agent" if not args.baseline else "baseline-policy",
                         "veil.algo": args.algo if not args.baseline else args.baseline})
        if resumed:
            print(f"resuming run {run.info.run_id} at step {resumed['num_timesteps']} of {args.timesteps}")
        else:
            tracking.log_params({"env": asdict(env_cfg), "split": split.summary(), **device_config(args).params(),
                                 "agent": {"algo": args.algo, "timesteps": args.timesteps, "n_envs": args.n_envs,
                                           "n_steps": args.n_steps, "ent_coef": args.ent_coef,
                                           "policy_lr": args.policy_lr, "baseline": args.baseline,
                                           "normalize_reward": normalize_reward, "log_std_init": args.log_std_init,
                                           "gamma": args.gamma}})
        probe, ev = make_probe(args, split)
        if ev is not None and not resumed:
            tracking.log_params({"probe": {"eval_model": ev.config.model, "eval_top1": round(ev.metrics["top1"], 4),
                                           "identities": args.probe_identities, "every": args.probe_every}})
        fns = [make_env_fn(env_cfg, split, i, 1 if args.n_envs > 1 else None, probe) for i in range(args.n_envs)]
        if args.baseline:
            env = fns[0]()
            _run_baseline(args, env, baseline_action, tracking, split,
                          skip=unplayed_terms(env_cfg.probe_every, env_cfg.deploy_price))
            fr_ckpt = save_game_target(env.save_fr, out_dir, run.info.run_id, env_cfg, f"baseline-{args.baseline}")
            print(f"FR model of the game: {fr_ckpt} (veil attack --model {fr_ckpt})")
            return None
        vec = SubprocVecEnv(fns) if args.n_envs > 1 else DummyVecEnv(fns)
        eval_env = vec.envs[0] if isinstance(vec, DummyVecEnv) else None
        if normalize_reward:
            vec = VecNormalize(vec, norm_obs=False, norm_reward=True)
        algo_cls = ALGOS[args.algo]
        # the policy on the FR model's device (a small MLP: on CUDA SB3 warns that the CPU may be faster)
        kwargs: dict[str, Any] = {"seed": args.seed, "device": args.device, "learning_rate": args.policy_lr,
                                  "verbose": 0,
                                  "gamma": args.gamma}
        if args.algo in ("ppo", "a2c"):
            kwargs.update(n_steps=args.n_steps, ent_coef=args.ent_coef,
                          policy_kwargs={"log_std_init": args.log_std_init})
        if args.algo == "ppo":
            kwargs.update(batch_size=min(64, args.n_steps * args.n_envs), n_epochs=args.n_epochs)
        if args.algo in ("sac", "td3"):
            kwargs.update(learning_starts=min(256, args.timesteps // 4), train_freq=4, gradient_steps=1)
            if args.algo == "sac":
                kwargs.update(ent_coef="auto" if args.ent_coef == 0 else args.ent_coef)
        agent = algo_cls("MlpPolicy", vec, **kwargs)
        progress = ProgressCallback(args.timesteps)
        agent.set_logger(mlflow_logger(rate=progress.rate))  # SB3's integer fps is 0 below a step a second
        terms = EnvTermsCallback(every=args.log_every, skip=unplayed_terms(env_cfg.probe_every, env_cfg.deploy_price))

        def evaluate() -> dict[str, float]:
            if eval_env is None:
                return vec.env_method("evaluate_fr", indices=0)[0]
            return eval_env.unwrapped.evaluate_fr()

        ckpt = out_dir / f"{run.info.run_id}-agent.zip"
        fr_eval = FREvalCallback(evaluate, every=args.eval_every)
        callbacks = [terms, fr_eval, AtomicCheckpointCallback(ckpt, every=args.checkpoint_every), progress]
        if args.algo in RESUMABLE and args.checkpoint_every:
            options = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))
                       and k not in ("resume", "argv")}
            callbacks.append(GameCheckpointCallback(
                game_checkpoint_path(out_dir, run.info.run_id), args.checkpoint_every,
                lambda: game_checkpoint(agent, terms, fr_eval, options, run.info.run_id)))
        remaining = args.timesteps
        if resumed:
            base = vec.venv if isinstance(vec, VecNormalize) else vec
            base._reset_seeds()  # the interrupted run's envs were seeded at its first reset, long ago
            restore_game(agent, resumed, terms, fr_eval)
            remaining = args.timesteps - agent.num_timesteps
            progress.done = agent.num_timesteps
        agent.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=not resumed)
        final = evaluate()
        tracking.log_metrics({f"final_fr.{k}": v for k, v in final.items()}, step=agent.num_timesteps)
        spread = action_spread(agent, env_cfg.fixed_params)
        if spread:
            tracking.log_metrics({f"final_policy.std.{k}": v for k, v in spread.items()}, step=agent.num_timesteps)
        warning = commitment_warning(spread)
        save_fr = (eval_env.unwrapped.save_fr if eval_env is not None
                   else lambda path, extra: vec.env_method("save_fr", path, extra, indices=0))
        fr_ckpt = save_game_target(save_fr, out_dir, run.info.run_id, env_cfg, "policy")
        grad = [h.get("env.grad_norm") for h in terms.history if h.get("env.grad_norm") is not None]
        fallbacks = {"acc_val": float(np.mean([h["env.acc_val"] for h in terms.history[-8:]])) if terms.history else 0.0,
                     "grad_norm": float(np.mean(grad)) if grad else 1.0}
        policy_path = export_policy(agent, out_dir / f"{run.info.run_id}-policy.safetensors", env_cfg, fallbacks)
        tracking.log_file(policy_path, "policy")
        registered = registered_name(str(env_cfg.data.source))
        version = log_policy_model(policy_path, registered=registered).registered_model_version
        plot = _plot_actions(terms.history, out_dir / f"{run.info.run_id}-actions.png")
        if plot:
            tracking.log_file(plot, "plots")
        tracking.log_json(terms.history, "action_history.json")
        vec.close()
    print(f"\nFR model of env 0: clean top-1 {final['top1']:.1%} on the private test split")
    print(f"policy: {policy_path}   (veil train-fr --policy {policy_path})")
    print(f"registered: models:/{registered}/{version} "
          "(veil benchmark sets @best on the policy that protected most within the budget)")
    print(f"agent checkpoint: {ckpt}\nFR model of the game: {fr_ckpt} (veil attack --model {fr_ckpt}; "
          f"use = \"target\" in a benchmark plan)")
    print(f"MLflow run {run.info.run_id}; look at it with: veil ui")
    if warning:
        print(warning)
    return policy_path


def parse_fixed(specs: list[str] | None) -> dict[str, float]:
    """``["label_follow=0", "high_band=0"]`` -> ``{"label_follow": 0.0, "high_band": 0.0}``."""
    out: dict[str, float] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--fix {spec!r}: write NAME=VALUE, e.g. label_follow=0") from None
    return out


def read_calibration(path: str) -> dict[str, Any]:
    """A ``veil calibrate`` calibration.json, with the keys every use needs checked."""

    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--calibration: no file {path}") from None
    except ValueError as err:
        raise ValueError(f"--calibration {path}: not a veil calibrate calibration.json ({err})") from None
    if not (isinstance(report, dict) and {"param", "chosen", "fixed"} <= report.keys()):
        raise ValueError(f"--calibration {path}: not a veil calibrate calibration.json (needs param, chosen, fixed)")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    checks = {"param": isinstance(report["param"], str),
              "chosen": report["chosen"] is None or number(report["chosen"]),
              "fixed": isinstance(report["fixed"], dict) and all(number(v) for v in report["fixed"].values()),
              "budget_points": number(report.get("budget_points", 0)),
              "candidates": isinstance(report.get("candidates", []), list) and all(
                  isinstance(c, dict) and number(c.get("value")) and number(c.get("drop"))
                  for c in report.get("candidates", []))}
    bad = [field for field, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"--calibration {path}: field {bad[0]!r} is not what veil calibrate writes "
                         f"({report.get(bad[0])!r})")
    return report


def calibrated_fixes(report: dict[str, Any], path: str, chosen: bool = True) -> dict[str, float]:
    """The fixes a calibration was run under, plus its choice unless ``chosen`` is false."""
    out = {k: float(v) for k, v in report["fixed"].items()}
    if not chosen:
        return out
    if report["chosen"] is None:
        raise ValueError(f"--calibration {path}: that calibration chose no {report['param']} (no value kept its "
                         f"budget of {report.get('budget_points')} points); nothing to play at")
    return {**out, report["param"]: float(report["chosen"])}


def merge_fixes(fixed: dict[str, float], calibrated: dict[str, float]) -> dict[str, float]:
    """``--fix`` values merged with a calibration's; a name given both ways with different values is refused."""
    out = dict(fixed)
    for name, value in calibrated.items():
        if name in out and out[name] != value:
            raise ValueError(f"--fix {name}={out[name]:g} contradicts --calibration, which fixes {name}={value:g}")
        out[name] = value
    return out


def fixes(specs: list[str] | None, calibration: str | None) -> dict[str, float]:
    """``--fix`` specs merged with the fixes and the choice of a calibration file (if any)."""
    calibrated = calibrated_fixes(read_calibration(calibration), calibration) if calibration else {}
    return merge_fixes(parse_fixed(specs), calibrated)


def deploy_price_from_calibration(report: dict[str, Any], path: str, weight: float) -> DeployPrice:
    """A calibration's measured drops as a ``DeployPrice`` on its parameter (budget from the file)."""

    try:
        cands = sorted(report["candidates"], key=lambda c: float(c["value"]))
        budget = float(report["budget_points"]) / 100.0
        values, drops = [float(c["value"]) for c in cands], [float(c["drop"]) / 100.0 for c in cands]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--calibration {path}: not a veil calibrate calibration.json ({err})") from None
    price = DeployPrice(report["param"], tuple(values), tuple(drops), budget=budget, weight=weight)
    if price.feasible() is None:
        raise ValueError(f"--calibration {path}: no measured {price.param} kept the budget of {budget:.0%}; "
                         f"a price that binds everywhere leaves nothing to play")
    return price


def game_constraints(args: Any) -> dict[str, Any]:
    """``EnvConfig`` keywords from ``--fix``, ``--bound``, ``--calibration`` and ``--price-deployment``:
    the fixed parameters, the action box, and (priced) the deployment price with the calibrated
    parameter bounded to the range the calibration measured."""
    bounds = parse_bounds(args.bound)
    if not args.price_deployment:
        return {"fixed_params": fixes(args.fix, args.calibration), "param_bounds": bounds}
    if not args.calibration:
        raise ValueError("--price-deployment needs --calibration FILE (the measured drops it charges)")
    report = read_calibration(args.calibration)
    price = deploy_price_from_calibration(report, args.calibration, args.deploy_weight)
    fixed = parse_fixed(args.fix)
    if price.param in fixed or price.param in bounds:
        raise ValueError(f"--price-deployment lets the agent choose {price.param}: drop its --fix/--bound")
    fixed = merge_fixes(fixed, calibrated_fixes(report, args.calibration, chosen=False))
    bounds[price.param] = (price.values[0], price.values[-1])
    lo, hi = price.feasible()
    print(f"deployment price on {price.param}: measured {dict(zip(price.values, price.drops))} (drop, fraction); "
          f"budget {price.budget:.0%} kept for {price.param} in [{lo:.3g}, {hi:.3g}]; box {bounds[price.param]}")
    return {"fixed_params": fixed, "param_bounds": bounds, "deploy_price": price}


def parse_bounds(specs: list[str] | None) -> dict[str, tuple[float, float]]:
    """``["radius=0:0.05"]`` -> ``{"radius": (0.0, 0.05)}`` (names and ranges checked by EnvConfig)."""
    out: dict[str, tuple[float, float]] = {}
    for spec in specs or []:
        name, sep, rng = spec.partition("=")
        lo, colon, hi = rng.partition(":")
        try:
            if not (sep and colon):
                raise ValueError
            out[name.strip()] = (float(lo), float(hi))
        except ValueError:
            raise ValueError(f"--bound {spec!r}: write NAME=LO:HI, e.g. radius=0:0.05") from None
    return out


def _run_baseline(args: Any, env: Any, baseline_action, tracking, split, skip: frozenset[str] = frozenset()) -> None:
    """Run a baseline policy through the same env for ``timesteps`` steps, logging the same terms
    (but those in ``skip``), with progress as the agent's (``progress_bar``)."""
    rng = np.random.default_rng(args.seed)

    fixed = full_action(args.fixed_action).astype(np.float32) if args.fixed_action else None
    env.reset(seed=args.seed)
    window: dict[str, list[float]] = {}
    for t in progress_bar(range(1, args.timesteps + 1), desc=f"baseline {args.baseline}", unit="step"):
        _, reward, _, truncated, info = env.step(baseline_action(args.baseline, rng, fixed))
        for k in ("loss_aug", "loss_excess", "acc_aug", "acc_preserve", "acc_val", "probe_top1",
                  *REWARD_TERMS):
            if k not in skip:
                window.setdefault(f"env.{k}", []).append(float(info[k]))
        window.setdefault("reward", []).append(reward)
        if t % args.log_every == 0:
            tracking.log_metrics({k: float(np.mean(v)) for k, v in window.items()}, step=t)
            window = {}
        if truncated:
            env.reset()
    final = env.evaluate_fr()
    tracking.log_metrics({f"final_fr.{k}": v for k, v in final.items()}, step=args.timesteps)
    print(f"baseline {args.baseline}: FR clean top-1 {final['top1']:.1%} after {args.timesteps} steps")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil train-agent`` sub-command (the environment options' defaults are ``EnvConfig``'s)."""
    e = EnvConfig
    a = sub.add_parser("train-agent", help="train the augmentation policy with stable-baselines3 (or run a baseline)",
                       description="Train an SB3 agent that picks frequency-MixUp and random-erasing parameters\n"
                                   "for each batch of FaceAugmentEnv (the adversarial game), or run a baseline\n"
                                   "policy (--baseline) through the same game.\n\n"
                                   "Logs everything to MLflow (see it with veil ui) and exports the policy\n"
                                   "(safetensors, no pickle) for veil train-fr --policy.",
                       epilog=EPILOG_DATA, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(a)
    g = a.add_argument_group("agent")
    g.add_argument("--algo", choices=("ppo", "sac", "td3", "a2c"), default="ppo", help="SB3 algorithm (default: ppo)")
    g.add_argument("--timesteps", type=count(1), default=4096, help="agent steps = FR batches in all envs (default: 4096)")
    g.add_argument("--n-envs", type=count(1), default=1,
                   help="parallel envs; > 1 uses SubprocVecEnv, each worker with its own FR model and one torch "
                        "thread; env 0's FR model is the one evaluated (default: 1)")
    g.add_argument("--n-steps", type=count(1), default=128, help="ppo/a2c rollout length per env (default: 128)")
    g.add_argument("--n-epochs", type=count(1), default=4, help="ppo epochs per update (default: 4)")
    g.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus (default: 0.01; sac: 0 = auto)")
    g.add_argument("--log-std-init", type=float, default=0.0,
                   help="ppo/a2c: initial log std of the Gaussian policy (default: 0, std 1: on the [-1, 1] action "
                        "box the game then trains under near-random augmentation; -1 gives std 0.37)")
    g.add_argument("--policy-lr", type=float, default=3e-4, help="agent learning rate (default: 3e-4)")
    g.add_argument("--gamma", type=float, default=0.99,
                   help="discount factor in [0, 1) (default: 0.99, SB3's). 0 scores each action by its own batch "
                        "only: the adversary's gain and the preserve term answer to the step's action, while the "
                        "slow terms (validation, probe) then add a per-state offset, not a signal")
    g.add_argument("--normalize-reward", action="store_true",
                   help="scale rewards by a running estimate of the return's std (SB3 VecNormalize, rewards only; "
                        "the observation and so the exported policy are unchanged). Helps when a large, slowly "
                        "changing term such as --privacy-weight dominates the return")
    g.add_argument("--baseline", choices=("none", "fixed", "random"), default=None,
                   help="run a baseline policy through the same env instead of learning one")
    g.add_argument("--fixed-action", type=float, nargs="+", default=None, metavar="A",
                   help="the action of --baseline fixed, 8 values in [-1, 1] (see the action table; 7 values "
                        "mean label_follow 1, the rule before it was an action)")
    g = a.add_argument_group("environment")
    g.add_argument("--model", choices=("cnn", "resnet18", "inception"), default="cnn", help="FR backbone (default: cnn)")
    g.add_argument("--lr", type=float, default=e.lr, help=f"FR learning rate (default: {e.lr})")
    g.add_argument("--batch-size", type=count(1), default=e.batch_size, help=f"FR batch size (default: {e.batch_size})")
    g.add_argument("--episode-steps", type=count(1), default=e.episode_steps, help=f"batches per episode (default: {e.episode_steps})")
    g.add_argument("--schedule", choices=("alternating", "interleaved"), default=e.schedule,
                   help=f"alternating policy/FR phases, or interleaved 1:1 (default: {e.schedule})")
    g.add_argument("--policy-steps", type=count(1), default=e.policy_steps, help=f"policy-phase length N1 (default: {e.policy_steps})")
    g.add_argument("--fr-steps", type=count(1), default=e.fr_steps, help=f"FR-phase length N2 (default: {e.fr_steps})")
    g.add_argument("--k-max", type=count(1), default=e.k_max, help=f"largest k the action can pick (default: {e.k_max})")
    g.add_argument("--mix-mode", choices=("complex", "amplitude", "phase", "dct"), default=e.mix_mode,
                   help=f"frequency transform of the MixUp (default: {e.mix_mode})")
    g.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="fix an action parameter for every action instead of letting the agent choose it "
                        "(repeatable; names from the action table), e.g. --fix label_follow=0 --fix high_band=0: "
                        "MixUp's targets never follow the mix and only the low band is mixed")
    g.add_argument("--calibration", default=None, metavar="FILE",
                   help="a veil calibrate calibration.json: play the game at the value it chose, with the fixes it "
                        "was calibrated under (as if given as --fix; an explicit --fix of another value is refused)")
    g.add_argument("--price-deployment", action="store_true",
                   help="with --calibration: instead of fixing the calibrated parameter at its choice, let the "
                        "agent choose it within the measured range and charge each step what the calibration "
                        "measured a target trained at that value loses (interpolated), beyond its budget: "
                        "reward -= --deploy-weight * max(0, drop(value) - budget)")
    g.add_argument("--deploy-weight", type=float, default=100.0,
                   help="weight of that deployment price, per unit of accuracy over budget (default: 100: one "
                        "point over costs 1, the scale of the adversary's z-scored gain)")
    g.add_argument("--bound", action="append", default=[], metavar="NAME=LO:HI",
                   help="let the agent choose a parameter only within [LO, HI] (repeatable; names from the action "
                        "table), e.g. --bound radius=0:0.05: a utility constraint from a fixed sweep; the exported "
                        "policy keeps it")
    g.add_argument("--acc-budget", type=float, default=e.acc_budget,
                   help="utility constraint: penalty when validation accuracy falls below this (default: 0 = off)")
    g.add_argument("--utility-weight", type=float, default=e.utility_weight, help=f"lambda of the utility penalty (default: {e.utility_weight})")
    g.add_argument("--reward-scale", choices=("zscore", "relative", "raw"), default=e.reward_scale,
                   help=f"normalization of the adversary's excess loss (default: {e.reward_scale})")
    g.add_argument("--preserve-budget", type=float, default=e.preserve_budget,
                   help="penalty when the FR model's top-1 on the augmented batch (see --preserve-on) falls below "
                        f"this (default: {e.preserve_budget})")
    g.add_argument("--preserve-weight", type=float, default=e.preserve_weight, help=f"weight of that penalty (default: {e.preserve_weight})")
    g.add_argument("--preserve-on", choices=("batch", "heldout", "heldout-drop"), default=e.preserve_on,
                   help="where the preserve term's top-1 is measured: the step's augmented training batch; the "
                        "held-out validation images augmented with the step's parameters, which the FR model "
                        "never trains on; or heldout-drop, 1 - (clean - augmented) top-1 on those images, so "
                        f"--preserve-budget 0.95 allows the adversary 5 points of held-out accuracy (default: {e.preserve_on})")
    g.add_argument("--val-every", type=count(1), default=e.val_every, help=f"validation every N env steps (default: {e.val_every})")
    g.add_argument("--warmup-steps", type=count(0), default=e.warmup_steps,
                   help=f"clean FR steps before the game, so the adversary's reward carries signal (default: {e.warmup_steps})")
    g.add_argument("--reset-mode", choices=("continue", "restart"), default=e.reset_mode,
                   help="continue: the FR model keeps learning across episodes (the game); restart: each episode "
                        f"starts again from the FR model as it was after the warm-up (default: {e.reset_mode})")
    g = a.add_argument_group("privacy probe (the PCA-prior attack, scored by the cached evaluation model)")
    g.add_argument("--probe-every", type=count(0), default=e.probe_every,
                   help="run the probe on the FR model every N env steps; its top-1 enters the observation (default: 0 = off)")
    g.add_argument("--privacy-weight", type=float, default=e.privacy_weight,
                   help="mu of the reward term -mu * probe top-1 (default: 0: observed and logged only)")
    g.add_argument("--probe-identities", type=count(1), default=10, help="identities the probe attacks (default: 10)")
    g.add_argument("--eval-epochs", type=count(1), default=40,
                   help="training epochs of the evaluation model, if it is not cached yet (default: 40)")
    g = a.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    g.add_argument("--threads", type=count(1), default=None, help="torch CPU threads (default: all cores)")
    g.add_argument("--log-every", type=count(1), default=64, help="log env terms every N steps (default: 64)")
    g.add_argument("--eval-every", type=count(1), default=1024, help="FR test evaluation every N steps (default: 1024)")
    g.add_argument("--checkpoint-every", type=count(1), default=1024,
                   help="agent checkpoint, and (PPO, A2C) a checkpoint of the whole game for --resume, every N steps "
                        "(default: 1024)")
    g.add_argument("--resume", default=None, metavar="RUN_ID|FILE",
                   help="continue an interrupted game from its last game checkpoint (<out-dir>/<run id>-game.pt or the "
                        "file), with the options it was started with, into the same MLflow run")
    g.add_argument("--out-dir", default="checkpoints", help="where the agent, the policy and plots go (default: checkpoints)")
    add_device_args(a)
    add_tracking_args(a)

    a.set_defaults(handler=run)
