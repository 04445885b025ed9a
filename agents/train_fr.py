"""``veil train-fr``: train a face-recognition model (with defenses or a learned policy) and log it to MLflow.

``FRJob`` is one training run, typed; the command builds it from its options and ``veil benchmark``
builds one per cell from its plan, so both train through ``train_fr``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch import nn

from veil.defenses.dp import make_private, unwrap
from veil.defenses.tldmi import freeze_until
from veil.env.schedule_game import SCHEDULE_SEED_OFFSET
from veil.recognition import (
    DataConfig,
    DeviceConfig,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    model_config_from_checkpoint,
    one_hot,
    split_identities,
    to_float,
)

from . import fr_defenses, tracking
from .export import PolicyAugmenter
from .fr_defenses import DefenseOptions
from .options import (
    EPILOG_DATA,
    FRBudget,
    add_data_args,
    add_defense_args,
    add_device_args,
    add_policy_use_args,
    add_tracking_args,
    count,
    data_configs,
    defense_options,
    device_config,
)
from .registry import policy_file
from .schedules import ScheduleAugmenter, load_schedule


@dataclass
class Tracking:
    """Where a run is logged: MLflow store, experiment and run name."""

    uri: str | None = None
    experiment: str = "veil"
    run_name: str | None = None


@dataclass
class PolicyUse:
    """A learned policy applied to every batch (``--policy``): its file, clean warm-up batches
    (None: the game's, from the file) and whether actions are sampled instead of the mean."""

    path: str
    warmup: int | None = None
    sample: bool = False


@dataclass
class FRJob:
    """One ``veil train-fr`` run: data, training budget, model, defenses or policy, and where it goes."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=FRBudget.epochs,
                                                                       batch_size=FRBudget.batch_size))
    model: str = FRBudget.model
    weights: str | None = None
    defense: DefenseOptions = field(default_factory=DefenseOptions)
    policy: PolicyUse | None = None
    augment_schedule: str | None = None
    threads: int | None = None
    checkpoint: str | None = None
    resume: str | None = None
    force: bool = False
    tracking: Tracking = field(default_factory=Tracking)
    device: DeviceConfig = field(default_factory=DeviceConfig)  # where it trains; not part of what it trains

    def __post_init__(self) -> None:
        if self.train.epochs < 1:
            raise ValueError(f"--epochs must be >= 1 (a run of 0 epochs logs an untrained model), got {self.train.epochs}")

    def resume_record(self) -> dict[str, Any]:
        """What a checkpoint records of its run and a resume must match: data and split (not where
        the files are or whether they are cached), model, training but its length, defenses, policy."""
        return {**data_record(self.data, self.split), "model": {"name": self.model, "weights": self.weights},
                "train": {k: v for k, v in asdict(self.train).items() if k != "epochs"},
                "defense": self.defense.params(), "policy": asdict(self.policy) if self.policy else None,
                "augment_schedule": (load_schedule(self.augment_schedule).to_dict()
                                     if self.augment_schedule else None)}


def defense_tag(names: list[str] | tuple[str, ...], job: FRJob) -> str:
    """What the run's ``veil.defense`` tag says it used: its defenses, ``policy`` for ``--policy``
    and ``schedule`` for ``--augment-schedule`` (``none`` only when it used nothing)."""
    used = [n for n in names if n != "none"]
    used += ["policy"] if job.policy else []
    used += ["schedule"] if job.augment_schedule else []
    return ",".join(used) or "none"


def data_record(data: DataConfig, split: SplitConfig) -> dict[str, Any]:
    """What a target checkpoint records of the faces and identities it was trained on (``data``,
    ``split``; not where the files are or whether they are cached), so a reader can check them."""
    return {"data": {k: v for k, v in asdict(data).items()
                     if k not in ("data_root", "use_cache", "strict", "in_memory", "workers")},
            "split": asdict(split)}


def first_difference(stored: Any, wanted: Any, where: str = "") -> str | None:
    """The first place two records differ, as ``key: stored -> wanted``; None when they agree."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in list(stored) + [k for k in wanted if k not in stored]:
            diff = first_difference(stored.get(key), wanted.get(key), f"{where}.{key}" if where else key)
            if diff:
                return diff
        return None
    if isinstance(stored, (list, tuple)) and isinstance(wanted, (list, tuple)) and len(stored) == len(wanted):
        return next((d for i, (a, b) in enumerate(zip(stored, wanted))
                     if (d := first_difference(a, b, f"{where}[{i}]"))), None)
    return None if stored == wanted else f"{where}: {stored!r} -> {wanted!r}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil train-fr`` sub-command."""
    p = sub.add_parser("train-fr", help="train a face-recognition model and log it to MLflow",
                       description="Train a face-recognition model on the private identities of a face set and\n"
                                   "evaluate it on their held-out images.\n\n"
                                   "Logs params, per-epoch metrics, sample grids, the checkpoint and the model to\n"
                                   "MLflow (see them with veil ui). With --defense, --policy or --augment-schedule\n"
                                   "every training batch is augmented or regularized; the run's veil.defense tag\n"
                                   "names what was used.",
                       epilog=EPILOG_DATA, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    t, b = TrainerConfig, FRBudget
    g = p.add_argument_group("model and training")
    g.add_argument("--model", choices=("cnn", "resnet18", "inception"), default=b.model,
                   help="backbone: cnn (fast small CNN, default), resnet18, inception (InceptionResnetV1, >= 75 px)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="local state dict to start from (e.g. InceptionResnetV1 VGGFace2 weights); nothing is downloaded")
    g.add_argument("--epochs", type=count(1), default=b.epochs, help=f"training epochs (default: {b.epochs})")
    g.add_argument("--batch-size", type=count(1), default=b.batch_size, help=f"images per step (default: {b.batch_size})")
    g.add_argument("--lr", type=float, default=b.lr, help=f"peak learning rate (default: {b.lr:g})")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=t.optimizer,
                   help=f"optimizer (default: {t.optimizer})")
    g.add_argument("--weight-decay", type=float, default=t.weight_decay,
                   help=f"weight decay (default: {t.weight_decay:g})")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default=t.schedule,
                   help=f"learning-rate schedule over the run (default: {t.schedule})")
    g.add_argument("--warmup-steps", type=count(0), default=t.warmup_steps,
                   help=f"linear learning-rate warm-up steps (default: {t.warmup_steps})")
    g.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    g.add_argument("--seed", type=int, default=t.seed, help=f"training seed (default: {t.seed})")
    g.add_argument("--threads", type=count(1), default=b.threads, help="torch CPU threads (default: all cores)")
    add_defense_args(p)
    g.add_argument("--policy", default=None, metavar="FILE",
                   help="augment every batch with a learned policy exported by veil train-agent (.safetensors)")
    add_policy_use_args(g)
    g.add_argument("--augment-schedule", default=None, metavar="FILE",
                   help="augment every batch by a schedule file (veil-schedule-1 TOML: phases of fixed settings or "
                        "boxes drawn per batch, by training progress), e.g. one a veil race or learner found")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="where to write the resumable checkpoint (default: checkpoints/<run id>.pt)")
    g.add_argument("--resume", default=None, metavar="FILE",
                   help="resume training from a checkpoint (continues its MLflow run); data, split, model, training "
                        "and defense options must be the checkpoint's, and a larger --epochs stretches the learning-"
                        "rate schedule to the new total")
    g.add_argument("--force", action="store_true",
                   help="with --resume: resume even where the options differ from the checkpoint's")
    add_device_args(p)
    add_tracking_args(p)
    p.set_defaults(handler=run)


def job_from_args(args: argparse.Namespace) -> FRJob:
    """The ``FRJob`` that ``veil train-fr``'s options describe."""
    data, split = data_configs(args)
    train = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                          weight_decay=args.weight_decay, schedule=args.schedule, hflip=not args.no_hflip,
                          warmup_steps=args.warmup_steps, seed=args.seed)
    policy = PolicyUse(args.policy, args.policy_warmup, args.policy_sample) if args.policy else None
    return FRJob(data=data, split=split, train=train, model=args.model, weights=args.weights,
                 defense=defense_options(args, args.seed), policy=policy, augment_schedule=args.augment_schedule,
                 threads=args.threads, checkpoint=args.checkpoint, resume=args.resume, force=args.force,
                 tracking=Tracking(args.tracking_uri, args.experiment, args.run_name), device=device_config(args))


def run(args: argparse.Namespace) -> int:
    """CLI entry of ``veil train-fr``."""
    train_fr(job_from_args(args))
    return 0


def train_fr(job: FRJob) -> str:
    """Train an FR model as ``job`` says; returns its MLflow run ID."""
    if job.threads:
        torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    data = load_faces(job.data)
    split = split_identities(data, job.split)
    load_s = time.perf_counter() - t0
    print(f"data: {data.source}: {len(data)} images of {data.num_identities} identities "
          f"-> {split.num_private} private ({len(split.train_labels)} train / {len(split.test_labels)} test), "
          f"{len(split.public_names)} public [{load_s:.1f}s]")

    defense, train_cfg, seed = job.defense, job.train, job.train.seed
    channels, size = job.data.channels, job.data.image_size
    model_cfg = ModelConfig(name=job.model, num_classes=split.num_private, in_channels=channels,
                            image_size=size, weights=job.weights)
    torch.manual_seed(seed)  # the initial weights follow the seed, not what the process drew before
    model = build_model(model_cfg)
    pretrain_history: list[dict[str, float]] = []
    if "tldmi" in defense.names and not job.resume:
        model, pretrain_history = _tldmi_pretrain(model, model_cfg, train_cfg, defense, split, job.device)
    elif "tldmi" in defense.names:  # resuming: the checkpoint holds the weights; freeze the same layers
        freeze_until(model, defense.tldmi.freeze)
    model = fr_defenses.wrap_model(model, defense, fr_defenses.embedding_dim(model, channels, size), split.num_private)
    trainer = Trainer(model, train_cfg, num_classes=split.num_private, device=job.device)
    trainer.regularizers = fr_defenses.regularizers(defense)
    trap = fr_defenses.attach_trapmid(trainer, defense, model_cfg)
    augment = fr_defenses.make_augment(defense)
    augmenter = None  # the learned policy, when there is one (what it chose is logged per epoch)
    if job.policy:
        if {"re", "mixup"} & set(defense.names):
            raise ValueError("--policy picks the erasing and MixUp parameters itself; drop re/mixup/hybrid from "
                             "--defense (negls, tldmi, mid, bido and dp combine with it)")
        planned = -(-len(split.train_labels) // train_cfg.batch_size) * train_cfg.epochs
        policy_augment, augmenter = policy_augment_for(job.policy, trainer, seed, planned)
        augment = fr_defenses.with_label_defenses(policy_augment, defense)
    if job.augment_schedule:
        if job.policy or {"re", "mixup"} & set(defense.names):
            raise ValueError("--augment-schedule sets the erasing and MixUp parameters itself; drop --policy and "
                             "re/mixup/hybrid from --defense (negls, tldmi, mid, bido and dp combine with it)")
        augmenter = ScheduleAugmenter.load(job.augment_schedule, seed=seed + SCHEDULE_SEED_OFFSET)
        augment = fr_defenses.with_label_defenses(schedule_augment_for(augmenter, trainer), defense)
        print(f"augment schedule: {job.augment_schedule} ({len(augmenter.schedule.phases)} phase(s))")
    if trap is not None and job.resume:
        raise ValueError("--resume is not supported with the trapmid defense: its triggers and discriminator are not "
                         "in the checkpoint")
    ledger = None
    if "dp" in defense.names:
        if job.resume:
            raise ValueError("--resume is not supported with the dp defense: its privacy accountant would restart")
        ledger = make_private(trainer, defense.dp, n_train=len(split.train_labels), epochs=train_cfg.epochs)
        print(f"dp: noise multiplier {ledger.noise_multiplier:.3f}, clip {defense.dp.max_grad_norm}, "
              f"sample rate {ledger.sample_rate:.4f}, target epsilon {defense.dp.epsilon} at delta {defense.dp.delta}")
    run_id = None
    if job.resume:
        def same_run(extra: dict) -> None:
            diff = first_difference(extra.get("job"), job.resume_record()) if "job" in extra else None
            if diff and not job.force:
                what = "another model" if diff.startswith("model.") else "other options"
                raise ValueError(f"--resume {job.resume} was written for {what} ({diff}); give the checkpoint's "
                                 "options, or --force to resume with these")
            if diff:
                print(f"warning: resuming {job.resume} with other options than it was written with ({diff}; --force)")
            if "model_config" in extra:  # weights of another shape cannot be resumed, --force or not
                stored, wanted = model_config_from_checkpoint(extra["model_config"]), replace(model_cfg, weights=None)
                if stored != wanted:
                    raise ValueError(f"--resume {job.resume} was written for another model ({stored}), not {wanted}")

        extra = trainer.load_checkpoint(job.resume, check=same_run)
        run_id = extra.get("mlflow_run_id")
        print(f"resumed from {job.resume} at epoch {trainer.epoch}")

    tracking.setup(job.tracking.uri, job.tracking.experiment)
    run_name = job.tracking.run_name or f"fr-{job.model}-{Path(str(job.data.source)).name}"
    with tracking.start_run(run_id=run_id, run_name=None if run_id else run_name, continue_work=True,
                            nested=mlflow.active_run() is not None) as run:
        run_id = run.info.run_id
        ckpt = Path(job.checkpoint or Path("checkpoints") / f"{run_id}.pt")
        if not job.resume:
            mlflow.set_tags({"veil.kind": "fr", "veil.defense": defense_tag(defense.names, job),
                             "veil.policy": job.policy.path if job.policy else "",
                             "veil.augment_schedule": job.augment_schedule or ""})
            if job.augment_schedule:
                tracking.log_file(job.augment_schedule, "schedule")
            synthetic = job.data.source == "synthetic"
            tracking.log_params({"data": {k: v for k, v in asdict(job.data).items() if not k.startswith("synthetic")
                                          or synthetic},
                                 "split": {**asdict(job.split), **split.summary()},
                                 "model": asdict(model_cfg), "train": asdict(train_cfg),
                                 "defense": defense.params(), **job.device.params()})
            for i, m in enumerate(pretrain_history):
                tracking.log_metrics({f"pretrain_{k}": v for k, v in m.items() if k != "epoch"}, step=i + 1)
            if augment is not None:
                idx = torch.linspace(0, len(split.train_labels) - 1, 16).long()  # spread over identities
                x = to_float(split.train_images[idx])
                draws = augmenter.generator.get_state() if job.augment_schedule else None
                aug, _ = augment(x, one_hot(split.train_labels[idx], split.num_private))
                if draws is not None:  # the grid does not take draws from the run: a schedule replays exactly
                    augmenter.generator.set_state(draws)
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
        prefix = "schedule" if job.augment_schedule else "policy"

        def on_epoch_end(metrics: dict[str, float]) -> None:
            if ledger is not None:
                metrics["dp_epsilon"] = ledger.epsilon()
            if trap is not None:  # triggered test images classified as their trigger's class
                metrics["trapmid_trigger_top1"] = trap.trigger_accuracy(split.test_images)
            if augmenter is not None:  # what the policy chose this epoch, as the agent's action.* metrics
                acted = augmenter.take_param_means()
                policy_epochs.append(acted)
                metrics.update({f"{prefix}.{k}": v for k, v in acted.items()})
            tracking.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))

        t1, start_epoch = time.perf_counter(), trainer.epoch
        # the checkpoint written at each epoch end records the run and the model too, so an
        # interrupted run is resumed into the same MLflow run and its checkpoint can be attacked
        ckpt_extra = {"mlflow_run_id": run_id, "model_config": asdict(model_cfg), "defense": defense.params(),
                      "job": job.resume_record()}
        trainer.fit(split.train_images, split.train_labels, split.test_images, split.test_labels,
                    augment=augment, on_epoch_end=on_epoch_end, checkpoint_path=ckpt, progress=True,
                    checkpoint_extra=ckpt_extra, desc="train-fr")
        if trainer.epoch == start_epoch:  # a resume with no epoch left: fit wrote nothing, write it here
            trainer.save_checkpoint(ckpt, extra=ckpt_extra)
        fit_s = time.perf_counter() - t1
        final = trainer.evaluate(split.test_images, split.test_labels)
        tracking.log_metrics({"final_test_top1": final["top1"], "final_test_top5": final["top5"],
                              "fit_seconds": fit_s}, step=trainer.epoch)
        tracking.log_file(ckpt, "checkpoint")
        tracking.log_fr_model(unwrap(trainer.model), to_float(split.test_images[:2]))
        uri = mlflow.get_tracking_uri()

    print(f"\nprivate test top-1 {final['top1']:.1%}, top-5 {final['top5']:.1%} "
          f"({split.num_private} identities, {len(split.test_labels)} test images), fit {fit_s:.0f}s")
    if ledger is not None:
        print(f"dp: spent epsilon {ledger.epsilon():.2f} at delta {ledger.delta}")
    if augmenter is not None and policy_epochs:
        print(f"{prefix} chose (mean of the epoch means): " + ", ".join(
            f"{k} {statistics.fmean(e[k] for e in policy_epochs if k in e):.2f}" for k in policy_epochs[-1])
              + f" (MLflow: {prefix}.<name> per epoch)")
    print(f"checkpoint: {ckpt}")
    print(f"MLflow run {run_id} in {uri}")
    print("look at it with:  veil ui   (it prints the address of the runs table)")
    return run_id


def schedule_augment_for(augmenter: ScheduleAugmenter, trainer: Trainer):
    """A schedule as the trainer's per-batch augmentation: its phase follows the trainer's progress."""
    def augment(images, targets):
        return augmenter(images, targets, step=trainer.global_step, total_steps=trainer.total_steps or 1)

    return augment


def policy_augment_for(policy: PolicyUse, trainer: Trainer | None, seed: int, planned_steps: int | None = None):
    """A learned policy as the trainer's per-batch augmentation, fed the last step's loss, and the
    ``PolicyAugmenter`` behind it (for what it chose)."""
    augmenter = PolicyAugmenter.load(policy_file(policy.path), seed=seed, warmup_steps=policy.warmup, sample=policy.sample)
    print(f"policy: {policy.path} ({'sampled' if policy.sample else 'mean action'}); clean warm-up for the first "
          f"{augmenter.warmup_steps} batches ({augmenter.warmup_source})")
    warning = augmenter.budget_warning(planned_steps) if planned_steps else None
    if warning:
        print(f"warning: {warning} (--policy-warmup, --epochs)")

    def augment(images, targets):
        last = trainer.last_stats
        return augmenter(images, targets, loss=last.loss if last else None, step=trainer.global_step,
                         total_steps=trainer.total_steps or 1, train_acc=last.accuracy if last else None)

    return augment, augmenter


def _tldmi_pretrain(model: nn.Module, model_cfg: ModelConfig, train_cfg: TrainerConfig, defense: DefenseOptions,
                    split, device: DeviceConfig = DeviceConfig(device="cpu")
                    ) -> tuple[nn.Module, list[dict[str, float]]]:
    """TL-DMI: train a copy on the public identities, move its backbone into ``model``, freeze."""
    n_pub = len(split.public_names)
    if n_pub < 2:
        raise ValueError("tldmi needs at least 2 public identities to pre-train on")
    public = build_model(replace(model_cfg, num_classes=n_pub, weights=None))
    public.load_state_dict({k: v for k, v in model.state_dict().items()
                            if public.state_dict()[k].shape == v.shape}, strict=False)
    pre = Trainer(public, replace(train_cfg, epochs=defense.tldmi.pretrain_epochs), num_classes=n_pub, device=device)
    print(f"tldmi: pre-training on {n_pub} public identities for {defense.tldmi.pretrain_epochs} epochs")
    history = pre.fit(split.public_images, split.public_labels, progress=True, desc="tldmi pre-training")
    fr_defenses.transfer_backbone(public, model)
    frozen = freeze_until(model, defense.tldmi.freeze)
    total = sum(1 for _ in model.parameters())
    print(f"tldmi: froze {len(frozen)} of {total} parameter tensors (up to {frozen[-1] if frozen else '-'})")
    return model, history
