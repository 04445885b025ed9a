"""The ``veil`` command line: ``veil train-fr`` trains a face-recognition model and logs it to
MLflow; ``veil ui`` serves MLflow's UI on veil's store."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

EPILOG_DATA = """data sources:
  synthetic   the embedded default: deterministic synthetic identities (no download)
  att, cfp    AT&T faces / CFP under $VEIL_DATA_ROOT (default ../shared/datasets)
  PATH        a folder with one sub-folder of images per identity (LFW, FaceScrub,
              VGGFace2, CASIA-WebFace layout) or a CelebA root with identity_CelebA.txt
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", metavar="{synthetic,att,cfp,PATH}",
                   help="face data to train on (default: synthetic; see 'data sources' below)")
    g.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder holding att_faces/ and cfp/ (default: $VEIL_DATA_ROOT or ../shared/datasets)")
    g.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels (default: 64)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="3: grey sets become RGB (default); 1: everything becomes grey")
    g.add_argument("--align", action="store_true",
                   help="align faces with facenet-pytorch's MTCNN (cached; center crop when no face is found)")
    g.add_argument("--pose", choices=("frontal", "profile", "all"), default="frontal",
                   help="CFP-style sets: which poses to load (default: frontal)")
    g.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    g.add_argument("--max-identities", type=int, default=None,
                   help="keep only the N identities with the most images (large sets like CelebA)")
    g.add_argument("--n-private", type=int, default=None,
                   help="number of private (target) identities; the rest are public (default: half)")
    g.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of each private identity's images held out for testing (default: 0.3 = 7/3 of 10)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the identity and train/test split (default: 0)")
    g.add_argument("--validation", action="store_true",
                   help="score on a validation split carved from the private training images (--test-fraction of "
                        "them); the test images join no set, so what you tune on it leaves the test split unseen")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the preprocessed-data cache")
    g.add_argument("--synthetic-identities", type=int, default=100,
                   help="synthetic data: number of identities (default: 100)")
    g.add_argument("--synthetic-images", type=int, default=30,
                   help="synthetic data: images per identity (default: 30)")


def data_configs(args: argparse.Namespace):
    """The ``DataConfig`` and ``SplitConfig`` that the shared data options describe."""
    from veil.recognition import DataConfig, SplitConfig

    data = DataConfig(source=args.data, image_size=args.image_size, channels=args.channels, align=args.align,
                      strict=args.strict, pose=args.pose, max_identities=args.max_identities,
                      data_root=args.data_root, use_cache=not args.no_cache,
                      synthetic_identities=args.synthetic_identities, synthetic_images=args.synthetic_images)
    split = SplitConfig(n_private=args.n_private, test_fraction=args.test_fraction, seed=args.split_seed,
                        validation=args.validation)
    return data, split


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $VEIL_TRACKING_URI or sqlite:///./mlruns/mlflow.db)")
    g.add_argument("--experiment", default="veil", help="MLflow experiment name (default: veil)")
    g.add_argument("--run-name", default=None, help="MLflow run name (default: derived from model and data)")


def _add_defense_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("defenses (see README: Defenses)")
    g.add_argument("--defense", default="none", metavar="{none,re,mixup,hybrid,tldmi,negls,mid,bido,dp}",
                   help="defense(s) to train with, comma-separated, e.g. re,tldmi; hybrid = mixup then re "
                        "(default: none)")
    g.add_argument("--re-p", type=float, default=1.0, help="re: probability a sample is erased (default: 1.0)")
    g.add_argument("--re-area", type=float, nargs=2, default=(0.1, 0.4), metavar=("LO", "HI"),
                   help="re: erased area fraction range (default: 0.1 0.4)")
    g.add_argument("--re-aspect", type=float, default=1.0,
                   help="re: aspect ratios drawn in [1/RHO, RHO] (default: 1, square)")
    g.add_argument("--re-fill", default="mean", help="re: fill: mean (batch channel mean), random, or a number")
    g.add_argument("--mix-k", type=int, default=3, help="mixup: images mixed per sample, 1-6 (default: 3)")
    g.add_argument("--mix-alpha", type=float, default=1.0, help="mixup: Dirichlet concentration (default: 1)")
    g.add_argument("--mix-band", choices=("low", "high", "band"), default="low",
                   help="mixup: which band is mixed (default: low)")
    g.add_argument("--mix-radius", type=float, nargs="+", default=[0.5], metavar="R",
                   help="mixup: band radius as a fraction of Nyquist; two values for --mix-band band (default: 0.5)")
    g.add_argument("--mix-mode", choices=("complex", "amplitude", "phase", "dct"), default="complex",
                   help="mixup: Fourier complex / amplitude-only / phase-only, or 8x8 block DCT (default: complex)")
    g.add_argument("--dct-drop-dc", action="store_true", help="mixup dct: zero every block's DC channel")
    g.add_argument("--mix-label-follow", type=float, default=1.0, metavar="F",
                   help="mixup: how far the targets follow the mix, 0-1: 1 mixes them by the band's energy share, "
                        "0 keeps each sample's own target, so the mixed band is noise to ignore (default: 1)")
    g.add_argument("--mix-p", type=float, default=1.0, metavar="P",
                   help="mixup: probability a sample is mixed; the rest of the batch stays clean (default: 1)")
    g.add_argument("--negls-factor", type=float, default=-0.05,
                   help="negls: label-smoothing factor, negative (default: -0.05)")
    g.add_argument("--mid-beta", type=float, default=0.01, help="mid: weight of the KL term (default: 0.01)")
    g.add_argument("--bido-lambda", type=float, nargs=2, default=(0.05, 0.5), metavar=("LX", "LY"),
                   help="bido: weights of HSIC(h, x) (minimized) and HSIC(h, y) (maximized) (default: 0.05 0.5)")
    g.add_argument("--dp-epsilon", type=float, default=8.0,
                   help="dp: target epsilon for the whole run; sets the noise (default: 8; 0 = use --dp-noise)")
    g.add_argument("--dp-delta", type=float, default=1e-5, help="dp: target delta (default: 1e-5)")
    g.add_argument("--dp-clip", type=float, default=1.0, help="dp: per-sample gradient norm bound (default: 1.0)")
    g.add_argument("--dp-noise", type=float, default=1.0,
                   help="dp: noise multiplier, used when --dp-epsilon is 0 (default: 1.0)")
    g.add_argument("--tl-freeze", default="0.6",
                   help="tldmi: freeze this fraction of the parameter tensors, or up to this layer name "
                        "(e.g. stages.3) (default: 0.6)")
    g.add_argument("--tl-pretrain-epochs", type=int, default=10,
                   help="tldmi: epochs of pre-training on the public identities (default: 10)")


def _defense_options(args: argparse.Namespace):
    import math

    from veil.defenses.baselines import BiDOConfig, MIDConfig, NegLSConfig
    from veil.defenses.dp import DPConfig
    from veil.defenses.erasing import EraseConfig
    from veil.defenses.mixup import MixConfig
    from veil.defenses.tldmi import TLDMIConfig

    from .fr_defenses import DefenseOptions, parse_defenses

    names = parse_defenses(args.defense)
    fill: str | float = args.re_fill if args.re_fill in ("mean", "random") else float(args.re_fill)
    radius = args.mix_radius
    if args.mix_band == "band":
        if len(radius) != 2:
            raise ValueError(f"--mix-band band needs two radii, got {radius}")
        band = (radius[0], radius[1])
    elif len(radius) != 1:
        raise ValueError(f"--mix-band {args.mix_band} takes one radius, got {radius}")
    else:
        band = (0.0, radius[0]) if args.mix_band == "low" else (radius[0], math.inf)
    try:
        freeze: str | float = float(args.tl_freeze)
    except ValueError:
        freeze = args.tl_freeze
    return DefenseOptions(
        names=names,
        erase=EraseConfig(p=args.re_p, scale=tuple(args.re_area), ratio=(1.0 / args.re_aspect, args.re_aspect),
                          value=fill),
        mix=MixConfig(k=args.mix_k, alpha=args.mix_alpha, band=band, mode=args.mix_mode, drop_dc=args.dct_drop_dc,
                      label_follow=args.mix_label_follow, p=args.mix_p),
        negls=NegLSConfig(args.negls_factor), mid=MIDConfig(beta=args.mid_beta),
        bido=BiDOConfig(*args.bido_lambda), tldmi=TLDMIConfig(freeze=freeze, pretrain_epochs=args.tl_pretrain_epochs),
        dp=DPConfig(epsilon=args.dp_epsilon or None, delta=args.dp_delta, max_grad_norm=args.dp_clip,
                    noise_multiplier=args.dp_noise),
        seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil", description="veil: train face-recognition models that resist model-inversion attacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train-fr", help="train a face-recognition model and log it to MLflow",
                       description="Train a face-recognition model on the private identities of a face set, "
                                   "evaluate it on their held-out images, and log params, per-epoch metrics, "
                                   "sample grids, the checkpoint and the model to MLflow.",
                       epilog=EPILOG_DATA, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p)
    g = p.add_argument_group("model and training")
    g.add_argument("--model", choices=("cnn", "resnet18", "inception"), default="cnn",
                   help="backbone: cnn (fast small CNN, default), resnet18, inception (InceptionResnetV1, >= 75 px)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="local state dict to start from (e.g. InceptionResnetV1 VGGFace2 weights); nothing is downloaded")
    g.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    g.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam", help="optimizer (default: adam)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default: 0)")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule over the run (default: cosine)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps (default: 0)")
    g.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    g.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    _add_defense_args(p)
    g.add_argument("--policy", default=None, metavar="FILE",
                   help="augment every batch with a learned policy exported by veil train-agent (.safetensors)")
    g.add_argument("--policy-warmup", type=int, default=None, metavar="N",
                   help="clean batches before the policy acts (default: the game's --warmup-steps, from the file; 0 when "
                        "the game fixed label_follow=0)")
    g.add_argument("--policy-sample", action="store_true",
                   help="draw each batch's action from the agent's Gaussian, as in the game, instead of taking "
                        "its mean (PPO/A2C policies)")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="where to write the resumable checkpoint (default: checkpoints/<run id>.pt)")
    g.add_argument("--resume", default=None, metavar="FILE",
                   help="resume training from a checkpoint (continues its MLflow run)")
    _add_tracking_args(p)

    a = sub.add_parser("train-agent", help="train the augmentation policy with stable-baselines3 (or run a baseline)",
                       description="Train an SB3 agent that picks frequency-MixUp and random-erasing parameters "
                                   "per batch on FaceAugmentEnv (the adversarial game), log everything to MLflow, "
                                   "and export the policy (safetensors, no pickle) for veil train-fr --policy.",
                       epilog=EPILOG_DATA, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(a)
    g = a.add_argument_group("agent")
    g.add_argument("--algo", choices=("ppo", "sac", "td3", "a2c"), default="ppo", help="SB3 algorithm (default: ppo)")
    g.add_argument("--timesteps", type=int, default=4096, help="agent steps = FR batches in all envs (default: 4096)")
    g.add_argument("--n-envs", type=int, default=1,
                   help="parallel envs; > 1 uses SubprocVecEnv, each worker with its own FR model and one torch "
                        "thread; env 0's FR model is the one evaluated (default: 1)")
    g.add_argument("--n-steps", type=int, default=128, help="ppo/a2c rollout length per env (default: 128)")
    g.add_argument("--n-epochs", type=int, default=4, help="ppo epochs per update (default: 4)")
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
    g.add_argument("--lr", type=float, default=1e-3, help="FR learning rate (default: 1e-3)")
    g.add_argument("--batch-size", type=int, default=32, help="FR batch size (default: 32)")
    g.add_argument("--episode-steps", type=int, default=64, help="batches per episode (default: 64)")
    g.add_argument("--schedule", choices=("alternating", "interleaved"), default="alternating",
                   help="alternating policy/FR phases, or interleaved 1:1 (default: alternating)")
    g.add_argument("--policy-steps", type=int, default=8, help="policy-phase length N1 (default: 8)")
    g.add_argument("--fr-steps", type=int, default=8, help="FR-phase length N2 (default: 8)")
    g.add_argument("--k-max", type=int, default=6, help="largest k the action can pick (default: 6)")
    g.add_argument("--mix-mode", choices=("complex", "amplitude", "phase", "dct"), default="complex",
                   help="frequency transform of the MixUp (default: complex)")
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
    g.add_argument("--acc-budget", type=float, default=0.0,
                   help="utility constraint: penalty when validation accuracy falls below this (default: 0 = off)")
    g.add_argument("--utility-weight", type=float, default=1.0, help="lambda of the utility penalty (default: 1)")
    g.add_argument("--reward-scale", choices=("zscore", "relative", "raw"), default="zscore",
                   help="normalization of the adversary's excess loss (default: zscore)")
    g.add_argument("--preserve-budget", type=float, default=0.5,
                   help="penalty when the FR model's top-1 on the augmented batch (see --preserve-on) falls below "
                        "this (default: 0.5)")
    g.add_argument("--preserve-weight", type=float, default=1.0, help="weight of that penalty (default: 1)")
    g.add_argument("--preserve-on", choices=("batch", "heldout", "heldout-drop"), default="batch",
                   help="where the preserve term's top-1 is measured: the step's augmented training batch; the "
                        "held-out validation images augmented with the step's parameters, which the FR model "
                        "never trains on; or heldout-drop, 1 - (clean - augmented) top-1 on those images, so "
                        "--preserve-budget 0.95 allows the adversary 5 points of held-out accuracy (default: batch)")
    g.add_argument("--val-every", type=int, default=64, help="validation every N env steps (default: 64)")
    g.add_argument("--warmup-steps", type=int, default=0,
                   help="clean FR steps before the game, so the adversary's reward carries signal (default: 0)")
    g.add_argument("--reset-mode", choices=("continue", "restart"), default="continue",
                   help="continue: the FR model keeps learning across episodes (the game); restart: each episode "
                        "starts again from the FR model as it was after the warm-up (default: continue)")
    g = a.add_argument_group("privacy probe (the PCA-prior attack, scored by the cached evaluation model)")
    g.add_argument("--probe-every", type=int, default=0,
                   help="run the probe on the FR model every N env steps; its top-1 enters the observation (default: 0 = off)")
    g.add_argument("--privacy-weight", type=float, default=0.0,
                   help="mu of the reward term -mu * probe top-1 (default: 0: observed and logged only)")
    g.add_argument("--probe-identities", type=int, default=10, help="identities the probe attacks (default: 10)")
    g.add_argument("--eval-epochs", type=int, default=40,
                   help="training epochs of the evaluation model, if it is not cached yet (default: 40)")
    g = a.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    g.add_argument("--log-every", type=int, default=64, help="log env terms every N steps (default: 64)")
    g.add_argument("--eval-every", type=int, default=1024, help="FR test evaluation every N steps (default: 1024)")
    g.add_argument("--checkpoint-every", type=int, default=1024, help="agent checkpoint every N steps (default: 1024)")
    g.add_argument("--out-dir", default="checkpoints", help="where the agent, the policy and plots go (default: checkpoints)")
    _add_tracking_args(a)

    d = sub.add_parser("demo", help="the main job: train the agent briefly, then FR models with and without its policy",
                       description="On the embedded synthetic faces (or --data): train a PPO agent briefly "
                                   "(short rollouts, so it updates many times), then a fresh FR model with the "
                                   "learned policy and one without, all logged to MLflow; about 6-8 minutes on 2 cores.")
    d.add_argument("--data", default="synthetic", metavar="{synthetic,att,cfp,PATH}", help="face data (default: synthetic)")
    d.add_argument("--timesteps", type=int, default=1024, help="agent steps (default: 1024)")
    d.add_argument("--epochs", type=int, default=10, help="epochs of each FR model (default: 10)")
    d.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    d.add_argument("--eval-epochs", type=int, default=8,
                   help="epochs of the evaluation model that scores the attack (cached after the first demo; default: 8)")
    d.add_argument("--n-private", type=int, default=None, help="private identities (default: half)")
    _add_tracking_args(d)

    from .attack_cli import add_parser as add_attack_parser

    add_attack_parser(sub, _add_data_args, _add_tracking_args)
    from .benchmark import add_parser as add_benchmark_parser

    add_benchmark_parser(sub, _add_data_args, _add_tracking_args)
    from .calibrate import add_parser as add_calibrate_parser

    add_calibrate_parser(sub, _add_data_args, _add_tracking_args)

    u = sub.add_parser("ui", help="serve the MLflow UI on veil's store (127.0.0.1)",
                       description="Serve MLflow's UI on veil's store (mlruns/mlflow.db), bound to 127.0.0.1, "
                                   "with one worker and MLflow's job runner off (about 0.5 GB instead of 3 GB).")
    u.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    u.add_argument("--tracking-uri", default=None, help="store to serve (default: veil's store in ./mlruns)")
    return parser


def cmd_train_fr(args: argparse.Namespace) -> int:
    train_fr(args)
    return 0


def train_fr(args: argparse.Namespace) -> str:
    """Train an FR model as ``args`` say; returns its MLflow run ID."""
    import mlflow
    import torch

    from veil.recognition import (ModelConfig, Trainer, TrainerConfig, build_model, load_faces,
                             model_config_from_checkpoint, one_hot, split_identities, to_float)

    from . import fr_defenses, tracking

    if args.threads:
        torch.set_num_threads(args.threads)
    data_cfg, split_cfg = data_configs(args)
    t0 = time.perf_counter()
    data = load_faces(data_cfg)
    split = split_identities(data, split_cfg)
    load_s = time.perf_counter() - t0
    print(f"data: {data.source}: {len(data)} images of {data.num_identities} identities "
          f"-> {split.num_private} private ({len(split.train_labels)} train / {len(split.test_labels)} test), "
          f"{len(split.public_names)} public [{load_s:.1f}s]")

    defense = _defense_options(args)
    model_cfg = ModelConfig(name=args.model, num_classes=split.num_private, in_channels=args.channels,
                            image_size=args.image_size, weights=args.weights)
    train_cfg = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                              weight_decay=args.weight_decay, schedule=args.schedule, hflip=not args.no_hflip,
                              warmup_steps=args.warmup_steps,
                              seed=args.seed)
    torch.manual_seed(args.seed)  # the initial weights follow --seed, not what the process drew before
    model = build_model(model_cfg)
    pretrain_history: list[dict[str, float]] = []
    if "tldmi" in defense.names and not args.resume:
        model, pretrain_history = _tldmi_pretrain(model, model_cfg, train_cfg, defense, split)
    elif "tldmi" in defense.names:  # resuming: the checkpoint holds the weights; freeze the same layers
        from veil.defenses.tldmi import freeze_until

        freeze_until(model, defense.tldmi.freeze)
    model = fr_defenses.wrap_model(model, defense, fr_defenses.embedding_dim(model, args.channels, args.image_size),
                                   split.num_private)
    trainer = Trainer(model, train_cfg, num_classes=split.num_private)
    trainer.regularizers = fr_defenses.regularizers(defense)
    augment = fr_defenses.make_augment(defense)
    augmenter = None  # the learned policy, when there is one (what it chose is logged per epoch)
    if args.policy:
        if {"re", "mixup"} & set(defense.names):
            raise ValueError("--policy picks the erasing and MixUp parameters itself; drop re/mixup/hybrid from "
                             "--defense (negls, tldmi, mid, bido and dp combine with it)")
        planned = -(-len(split.train_labels) // args.batch_size) * args.epochs
        policy_augment, augmenter = _policy_augment(args.policy, trainer, args.seed, args.policy_warmup, planned,
                                                    args.policy_sample)
        augment = fr_defenses.with_label_defenses(policy_augment, defense)
    ledger = None
    if "dp" in defense.names:
        from veil.defenses.dp import make_private

        if args.resume:
            raise ValueError("--resume is not supported with the dp defense: its privacy accountant would restart")
        ledger = make_private(trainer, defense.dp, n_train=len(split.train_labels), epochs=args.epochs)
        print(f"dp: noise multiplier {ledger.noise_multiplier:.3f}, clip {defense.dp.max_grad_norm}, "
              f"sample rate {ledger.sample_rate:.4f}, target epsilon {defense.dp.epsilon} at delta {defense.dp.delta}")
    run_id = None
    if args.resume:
        def same_model(extra: dict) -> None:
            if "model_config" not in extra:
                return
            stored, wanted = model_config_from_checkpoint(extra["model_config"]), replace(model_cfg, weights=None)
            if stored != wanted:
                raise ValueError(f"--resume {args.resume} was written for another model ({stored}), not {wanted}")

        extra = trainer.load_checkpoint(args.resume, check=same_model)
        run_id = extra.get("mlflow_run_id")
        print(f"resumed from {args.resume} at epoch {trainer.epoch}")

    tracking.setup(args.tracking_uri, args.experiment)
    run_name = args.run_name or f"fr-{args.model}-{Path(str(args.data)).name}"
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                          nested=mlflow.active_run() is not None) as run:
        run_id = run.info.run_id
        ckpt = Path(args.checkpoint or Path("checkpoints") / f"{run_id}.pt")
        if not args.resume:
            mlflow.set_tags({"veil.kind": "fr", "veil.defense": ",".join(defense.names),
                             "veil.policy": args.policy or ""})
            tracking.log_params({"data": {k: v for k, v in asdict(data_cfg).items() if not k.startswith("synthetic")
                                          or args.data == "synthetic"},
                                 "split": {**asdict(split_cfg), **split.summary()},
                                 "model": asdict(model_cfg), "train": asdict(train_cfg),
                                 "defense": defense.params()})
            for i, m in enumerate(pretrain_history):
                tracking.log_metrics({f"pretrain_{k}": v for k, v in m.items() if k != "epoch"}, step=i + 1)
            if augment is not None:
                idx = torch.linspace(0, len(split.train_labels) - 1, 16).long()  # spread over identities
                x = to_float(split.train_images[idx])
                aug, _ = augment(x, one_hot(split.train_labels[idx], split.num_private))
                tracking.log_image_grid(torch.cat([x, aug]), "samples/augmented.png", nrow=16)
                if augmenter is not None:
                    augmenter.take_param_means()  # the sample grid is not part of the run
            tracking.log_json(split.manifest(data), "split.json")
            tracking.log_image_grid(tracking.samples_per_identity(split.train_images, split.train_labels),
                                    "samples/private_train.png")
            if len(split.public_labels):
                tracking.log_image_grid(tracking.samples_per_identity(split.public_images, split.public_labels),
                                        "samples/public.png")

        policy_epochs: list[dict[str, float]] = []

        def on_epoch_end(metrics: dict[str, float]) -> None:
            if ledger is not None:
                metrics["dp_epsilon"] = ledger.epsilon()
            if augmenter is not None:  # what the policy chose this epoch, as the agent's action.* metrics
                acted = augmenter.take_param_means()
                policy_epochs.append(acted)
                metrics.update({f"policy.{k}": v for k, v in acted.items()})
            tracking.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))

        t1, start_epoch = time.perf_counter(), trainer.epoch
        # the checkpoint written at each epoch end records the run and the model too, so an
        # interrupted run is resumed into the same MLflow run and its checkpoint can be attacked
        ckpt_extra = {"mlflow_run_id": run_id, "model_config": asdict(model_cfg), "defense": defense.params()}
        trainer.fit(split.train_images, split.train_labels, split.test_images, split.test_labels,
                    augment=augment, on_epoch_end=on_epoch_end, checkpoint_path=ckpt, progress=True,
                    checkpoint_extra=ckpt_extra)
        if trainer.epoch == start_epoch:  # a resume with no epoch left: fit wrote nothing, write it here
            trainer.save_checkpoint(ckpt, extra=ckpt_extra)
        fit_s = time.perf_counter() - t1
        final = trainer.evaluate(split.test_images, split.test_labels)
        tracking.log_metrics({"final_test_top1": final["top1"], "final_test_top5": final["top5"],
                              "fit_seconds": fit_s}, step=trainer.epoch)
        tracking.log_file(ckpt, "checkpoint")
        from veil.defenses.dp import unwrap

        tracking.log_fr_model(unwrap(trainer.model), to_float(split.test_images[:2]))
        uri = mlflow.get_tracking_uri()

    print(f"\nprivate test top-1 {final['top1']:.1%}, top-5 {final['top5']:.1%} "
          f"({split.num_private} identities, {len(split.test_labels)} test images), fit {fit_s:.0f}s")
    if ledger is not None:
        print(f"dp: spent epsilon {ledger.epsilon():.2f} at delta {ledger.delta}")
    if augmenter is not None and policy_epochs:
        print("policy chose (mean of the epoch means): " + ", ".join(
            f"{k} {statistics.fmean(e[k] for e in policy_epochs if k in e):.2f}" for k in policy_epochs[-1])
              + " (MLflow: policy.<name> per epoch)")
    print(f"checkpoint: {ckpt}")
    print(f"MLflow run {run_id} in {uri}")
    print("look at it with:  veil ui   (then open http://127.0.0.1:5000)")
    return run_id


def _policy_augment(path: str, trainer, seed: int, warmup: int | None = None, planned_steps: int | None = None,
                    sample: bool = False):
    """A learned policy as the trainer's per-batch augmentation, fed the last step's loss, and the
    ``PolicyAugmenter`` behind it (for what it chose)."""
    from .export import PolicyAugmenter

    augmenter = PolicyAugmenter.load(path, seed=seed, warmup_steps=warmup, sample=sample)
    print(f"policy: {path} ({'sampled' if sample else 'mean action'}); clean warm-up for the first "
          f"{augmenter.warmup_steps} batches ({augmenter.warmup_source})")
    warning = augmenter.budget_warning(planned_steps) if planned_steps else None
    if warning:
        print(f"warning: {warning} (--policy-warmup, --epochs)")

    def augment(images, targets):
        last = trainer.last_stats
        return augmenter(images, targets, loss=last.loss if last else None, step=trainer.global_step,
                         total_steps=trainer.total_steps or 1, train_acc=last.accuracy if last else None)

    return augment, augmenter


def _tldmi_pretrain(model, model_cfg, train_cfg, defense, split):
    """TL-DMI: train a copy on the public identities, move its backbone into ``model``, freeze."""
    from veil.defenses.tldmi import freeze_until
    from veil.recognition import Trainer, build_model

    from . import fr_defenses

    n_pub = len(split.public_names)
    if n_pub < 2:
        raise ValueError("tldmi needs at least 2 public identities to pre-train on")
    public = build_model(replace(model_cfg, num_classes=n_pub, weights=None))
    public.load_state_dict({k: v for k, v in model.state_dict().items()
                            if public.state_dict()[k].shape == v.shape}, strict=False)
    pre = Trainer(public, replace(train_cfg, epochs=defense.tldmi.pretrain_epochs), num_classes=n_pub)
    print(f"tldmi: pre-training on {n_pub} public identities for {defense.tldmi.pretrain_epochs} epochs")
    history = pre.fit(split.public_images, split.public_labels, progress=True)
    fr_defenses.transfer_backbone(public, model)
    frozen = freeze_until(model, defense.tldmi.freeze)
    total = sum(1 for _ in model.parameters())
    print(f"tldmi: froze {len(frozen)} of {total} parameter tensors (up to {frozen[-1] if frozen else '-'})")
    return model, history


def cmd_demo(args: argparse.Namespace) -> int:
    from . import train_agent
    from .attack_cli import cmd_attack

    parser = build_parser()
    common = ["--data", args.data, "--seed", str(args.seed), "--experiment", args.experiment]
    if args.tracking_uri:
        common += ["--tracking-uri", args.tracking_uri]
    if args.n_private:
        common += ["--n-private", str(args.n_private)]
    print("== 1/4: training the augmentation agent (PPO) on the adversarial game")
    agent_args = parser.parse_args(["train-agent", *common, "--timesteps", str(args.timesteps), "--n-steps", "128",
                                    "--warmup-steps", "300", "--acc-budget", "0.5", "--utility-weight", "5",
                                    "--run-name", "demo-agent"])
    policy = train_agent.train(agent_args)
    print("\n== 2/4: a fresh FR model trained with the learned policy")
    run_policy = train_fr(parser.parse_args(["train-fr", *common, "--epochs", str(args.epochs), "--policy", str(policy),
                                             "--run-name", "demo-fr-policy"]))
    print("\n== 3/4: the same FR model without augmentation, for comparison")
    run_none = train_fr(parser.parse_args(["train-fr", *common, "--epochs", str(args.epochs),
                                           "--run-name", "demo-fr-none"]))
    print("\n== 4/4: the privacy probe (PCA-prior attack on 20 private identities) against both")
    for run_id in (run_policy, run_none):
        attack = ["attack", "--model", run_id, "--attack", "pca", "--attack-seeds", "1", "--restarts", "1",
                  "--identities", "20",
                  "--eval-epochs", str(args.eval_epochs), "--seed", str(args.seed), "--experiment", args.experiment]
        if args.tracking_uri:
            attack += ["--tracking-uri", args.tracking_uri]
        cmd_attack(parser.parse_args(attack))
    print("\nCompare the runs demo-agent, demo-fr-policy and demo-fr-none (attack reports nested under the FR runs):"
          "  veil ui   (http://127.0.0.1:5000)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from . import tracking

    uri = args.tracking_uri or tracking.default_tracking_uri()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.default_artifact_root()]
    print(f"serving {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import train_agent

    from .attack_cli import cmd_attack
    from .benchmark import cmd_benchmark
    from .calibrate import cmd_calibrate

    handlers = {"train-fr": cmd_train_fr, "train-agent": train_agent.run, "demo": cmd_demo, "ui": cmd_ui,
                "attack": cmd_attack, "benchmark": cmd_benchmark,
                "calibrate": cmd_calibrate}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        # bad input or a diverged run: a one-line error, the MLflow run (if any) already marked failed
        print(f"veil {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
