"""``veil train-agent``: train the augmentation policy on ``FaceAugmentEnv`` with SB3, tracked in
MLflow, and export it; or run a baseline policy (none, fixed, random) through the same env."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from veil.env import DeployPrice


def _plot_actions(history: list[dict[str, float]], path: Path) -> Path | None:
    """Chosen parameters (window means) across training, one panel per parameter."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .rl import PARAM_NAMES

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
        from dataclasses import replace

        from veil.env import FaceAugmentEnv

        if threads:
            torch.set_num_threads(threads)
        return FaceAugmentEnv(replace(env_cfg, seed=env_cfg.seed + 1000 * rank), split=split, probe=probe)
    return _make


def make_probe(args: Any, split: Any):
    """The privacy probe of ``--probe-every``: PCA-prior attack scored by the cached evaluation
    model (trained here the first time, which takes a few minutes), or ``None``."""
    if not getattr(args, "probe_every", 0):
        return None, None
    from veil.attacks import PrivacyProbe, ProbeConfig
    from veil.attacks.evaluation import EvalModelConfig, train_eval_model

    ev = train_eval_model(split, EvalModelConfig(epochs=args.eval_epochs, seed=args.seed))
    print(f"probe: evaluation model {ev.config.model} at {ev.metrics['top1']:.1%} private test top-1"
          f"{' (cached)' if ev.cached else ''}; {args.probe_identities} identities every {args.probe_every} steps")
    return PrivacyProbe(split, ev.model, ProbeConfig(identities=args.probe_identities, seed=args.seed)), ev


def run(args: Any) -> int:
    """CLI entry: train (or run a baseline) and return the exit code."""
    train(args)
    return 0


def train(args: Any) -> Path | None:
    """Train the agent as ``args`` say; return the exported policy's path (``None`` for a baseline)."""
    import mlflow
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    from veil.env import EnvConfig
    from veil.recognition import load_faces, split_identities

    from . import tracking
    from .cli import data_configs
    from .export import export_policy, log_policy_model
    from .rl import (ALGOS, AtomicCheckpointCallback, EnvTermsCallback, FREvalCallback, ProgressCallback,
                     action_spread, baseline_action, commitment_warning, mlflow_logger)

    if not 0.0 <= args.gamma < 1.0:
        raise ValueError(f"--gamma must be in [0, 1), got {args.gamma}")
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
                        privacy_weight=args.privacy_weight, seed=args.seed)
    print(f"data: {split.num_private} private identities, {len(split.train_labels)} training images; "
          f"{args.n_envs} env(s), {args.algo if not args.baseline else 'baseline ' + args.baseline}")

    tracking.setup(args.tracking_uri, args.experiment)
    name = args.run_name or (f"agent-{args.algo}" if not args.baseline else f"baseline-{args.baseline}")
    out_dir = Path(args.out_dir)
    normalize_reward = bool(args.normalize_reward)
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({"veil.kind": "agent" if not args.baseline else "baseline-policy",
                         "veil.algo": args.algo if not args.baseline else args.baseline})
        tracking.log_params({"env": asdict(env_cfg), "split": split.summary(),
                             "agent": {"algo": args.algo, "timesteps": args.timesteps, "n_envs": args.n_envs,
                                       "n_steps": args.n_steps, "ent_coef": args.ent_coef,
                                       "policy_lr": args.policy_lr, "baseline": args.baseline,
                                       "normalize_reward": normalize_reward, "log_std_init": args.log_std_init,
                                       "gamma": args.gamma}})
        probe, ev = make_probe(args, split)
        if ev is not None:
            tracking.log_params({"probe": {"eval_model": ev.config.model, "eval_top1": round(ev.metrics["top1"], 4),
                                           "identities": args.probe_identities, "every": args.probe_every}})
        fns = [make_env_fn(env_cfg, split, i, 1 if args.n_envs > 1 else None, probe) for i in range(args.n_envs)]
        if args.baseline:
            env = fns[0]()
            _run_baseline(args, env, baseline_action, tracking, split)
            fr_ckpt = out_dir / f"{run.info.run_id}-fr.pt"
            env.save_fr(fr_ckpt, {"mlflow_run_id": run.info.run_id, "defense": {"names": f"baseline-{args.baseline}"}})
            tracking.log_file(fr_ckpt, "checkpoint")
            return None
        vec = SubprocVecEnv(fns) if args.n_envs > 1 else DummyVecEnv(fns)
        eval_env = vec.envs[0] if isinstance(vec, DummyVecEnv) else None
        if normalize_reward:
            vec = VecNormalize(vec, norm_obs=False, norm_reward=True)
        algo_cls = ALGOS[args.algo]
        kwargs: dict[str, Any] = {"seed": args.seed, "device": "cpu", "learning_rate": args.policy_lr, "verbose": 0,
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
        agent.set_logger(mlflow_logger())
        terms = EnvTermsCallback(every=args.log_every)

        def evaluate() -> dict[str, float]:
            if eval_env is None:
                return vec.env_method("evaluate_fr", indices=0)[0]
            return eval_env.unwrapped.evaluate_fr()

        ckpt = out_dir / f"{run.info.run_id}-agent.zip"
        callbacks = [terms, FREvalCallback(evaluate, every=args.eval_every),
                     AtomicCheckpointCallback(ckpt, every=args.checkpoint_every), ProgressCallback(args.timesteps)]
        agent.learn(total_timesteps=args.timesteps, callback=callbacks)
        final = evaluate()
        tracking.log_metrics({f"final_fr.{k}": v for k, v in final.items()}, step=agent.num_timesteps)
        spread = action_spread(agent, env_cfg.fixed_params)
        if spread:
            tracking.log_metrics({f"final_policy.std.{k}": v for k, v in spread.items()}, step=agent.num_timesteps)
        warning = commitment_warning(spread)
        fr_ckpt = out_dir / f"{run.info.run_id}-fr.pt"
        extra = {"mlflow_run_id": run.info.run_id, "defense": {"names": "policy"}}
        if eval_env is None:
            vec.env_method("save_fr", str(fr_ckpt), extra, indices=0)
        else:
            eval_env.unwrapped.save_fr(fr_ckpt, extra)
        tracking.log_file(fr_ckpt, "checkpoint")
        grad = [h.get("env.grad_norm") for h in terms.history if h.get("env.grad_norm") is not None]
        fallbacks = {"acc_val": float(np.mean([h["env.acc_val"] for h in terms.history[-8:]])) if terms.history else 0.0,
                     "grad_norm": float(np.mean(grad)) if grad else 1.0}
        policy_path = export_policy(agent, out_dir / f"{run.info.run_id}-policy.safetensors", env_cfg, fallbacks)
        tracking.log_file(policy_path, "policy")
        log_policy_model(policy_path)
        plot = _plot_actions(terms.history, out_dir / f"{run.info.run_id}-actions.png")
        if plot:
            tracking.log_file(plot, "plots")
        tracking.log_json(terms.history, "action_history.json")
        vec.close()
    print(f"\nFR model of env 0: clean top-1 {final['top1']:.1%} on the private test split")
    print(f"policy: {policy_path}   (veil train-fr --policy {policy_path})")
    print(f"agent checkpoint: {ckpt}\nFR model of the game: {fr_ckpt} (veil attack --model {run.info.run_id})")
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
    import json

    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--calibration: no file {path}") from None
    except ValueError as err:
        raise ValueError(f"--calibration {path}: not a veil calibrate calibration.json ({err})") from None
    if not (isinstance(report, dict) and {"param", "chosen", "fixed"} <= report.keys()
            and isinstance(report["fixed"], dict)):
        raise ValueError(f"--calibration {path}: not a veil calibrate calibration.json (needs param, chosen, fixed)")
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
    from veil.env import DeployPrice

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


def _run_baseline(args: Any, env: Any, baseline_action, tracking, split) -> None:
    """Run a baseline policy through the same env for ``timesteps`` steps, logging the same terms."""
    rng = np.random.default_rng(args.seed)
    from veil.defenses.params import full_action
    from veil.env.face_augment import REWARD_TERMS

    fixed = full_action(args.fixed_action).astype(np.float32) if args.fixed_action else None
    env.reset(seed=args.seed)
    window: dict[str, list[float]] = {}
    for t in range(1, args.timesteps + 1):
        _, reward, _, truncated, info = env.step(baseline_action(args.baseline, rng, fixed))
        for k in ("loss_aug", "loss_excess", "acc_aug", "acc_preserve", "acc_val", "probe_top1",
                  *REWARD_TERMS):
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
