"""``veil attack``: run model-inversion attacks on a trained FR model (an MLflow run ID, a veil
checkpoint or an MLflow model folder), score them with the cached evaluation model and log the
reports to MLflow, nested under the target's training run when it is a run ID."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from veil.attacks.evaluation import EvalModel, EvalModelConfig, build_eval_model, train_eval_model
from veil.attacks.harness import ATTACKS, HarnessConfig, run_attack, target_accuracy
from veil.attacks.report import AttackReport
from veil.attacks.settings import AttackSettings
from veil.recognition import (
    DataConfig,
    SplitConfig,
    build_model,
    load_faces,
    model_config_from_checkpoint,
    split_identities,
)

from . import tracking
from .fr_defenses import embedding_dim, wrap_recorded
from .options import add_data_args, add_device_args, add_tracking_args, count, data_configs, device_config


class DictOutputs(nn.Module):
    """Adapts a model that returns a logits tensor (an MLflow-logged ``LogitsOnly``) to veil's
    output contract; the logits double as the embedding."""
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "DictOutputs":
        """Switch modes where the wrapped model allows it (an exported MLflow model does not)."""
        self.training = mode
        try:
            self.model.train(mode)
        except NotImplementedError:
            pass
        return self

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        out = self.model(x)
        if isinstance(out, dict):
            return out
        return {"logits": out, "embedding": out, "hidden": []}


def _run_params(run_id: str) -> dict[str, str]:

    try:
        return mlflow.get_run(run_id).data.params
    except Exception as err:
        raise ValueError(f"{run_id!r} is neither a file nor a run ID in {mlflow.get_tracking_uri()}: {err}") from err


RUN_DATA_FIELDS = ("source", "data_root", "image_size", "channels", "align", "pose", "max_identities",
                   "synthetic_identities", "synthetic_images")
RUN_SPLIT_FIELDS = ("n_private", "test_fraction", "seed")


def data_from_params(params: dict[str, str]) -> tuple[DataConfig, SplitConfig]:
    """The ``DataConfig`` and ``SplitConfig`` a training run logged (``data.*``/``split.*`` params;
    an agent run's under ``env.``): which faces and which identities, so the attack scores the
    same split (a field it did not log keeps its default)."""
    prefix = "env." if "data.source" not in params and "env.data.source" in params else ""  # an agent run

    def read(cls: type, section: str, names: tuple[str, ...]) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        out = {}
        for f in fields(cls):
            value = params.get(f"{prefix}{section}.{f.name}")
            if value is None or value == "None" or f.name not in names:
                continue
            kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
            out[f.name] = value == "True" if kind is bool else kind(value) if kind in (int, float) else value
        return out

    try:
        return (DataConfig(**read(DataConfig, "data", RUN_DATA_FIELDS)),
                SplitConfig(**read(SplitConfig, "split", RUN_SPLIT_FIELDS)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"the target's run logged data options veil cannot read: {err}") from None


def model_from_checkpoint(path: Path) -> tuple[nn.Module, str | None]:
    """Rebuild a ``veil train-fr`` model from its checkpoint (weights only, no pickle), wrappers
    included (MID's bottleneck; DP's per-sample-gradient wrapper is stripped); returns it and the
    MLflow run it names."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable veil checkpoint: {err}") from err
    extra = state.get("extra", {}) if isinstance(state, dict) else {}
    mc = extra.get("model_config")
    if mc is None or "model" not in state:
        raise ValueError(f"{path} has no model_config (not written by veil train-fr)")
    cfg = model_config_from_checkpoint(mc)
    model = build_model(cfg)
    weights = {k.removeprefix("_module."): v for k, v in state["model"].items()}
    defense = extra.get("defense", {})
    if {"mid", "loft"} & set(str(defense.get("names", "")).split(",")):  # a wrapped head
        model = wrap_recorded(model, defense, embedding_dim(model, cfg.in_channels, cfg.image_size), cfg.num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the model it describes ({str(err).splitlines()[0]})") from err
    return model.eval(), extra.get("mlflow_run_id")


@contextlib.contextmanager
def no_pickle() -> Iterator[None]:
    """MLflow may not unpickle anything in the block (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``, which
    MLflow reads at each load): a pickled model folder is refused, a ``pt2`` one is checked for
    pickle payloads before it is read."""
    before = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"]
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = before


def load_mlflow_model(path: Path) -> nn.Module:
    """An MLflow PyTorch model folder, loaded without unpickling: veil logs its models as ``pt2``
    archives (``torch.export``), which MLflow checks for pickle payloads; a folder saved with pickle
    could run code when opened and is refused."""
    try:
        with no_pickle():
            return mlflow.pytorch.load_model(str(path), map_location="cpu")
    except MlflowException as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "pickle" in first.lower():
            raise ValueError(f"{path}: an MLflow model saved with pickle, which could run code when loaded; veil "
                             "loads only pt2 model folders (as veil train-fr logs them), checkpoints or run IDs") \
                from None
        raise ValueError(f"{path} is not a loadable MLflow model folder: {first}") from None
    except Exception as err:  # a corrupt archive: torch, zipfile and yaml raise their own types
        raise ValueError(f"{path} is not a loadable MLflow model folder: {type(err).__name__}: {err}") from None


def load_target(spec: str, device: str | torch.device = "cpu") -> tuple[nn.Module, str | None, dict[str, str]]:
    """The target model (on ``device``), its MLflow run ID (if known) and that run's params. ``spec``
    is a veil checkpoint, an MLflow model folder, or a run ID of ``veil train-fr`` (its checkpoint
    artifact) or of ``veil train-agent`` (its game's FR model, the ``game_target`` artifact)."""
    model, run_id, params = _load_target(spec)
    return model.to(device), run_id, params


def _load_target(spec: str) -> tuple[nn.Module, str | None, dict[str, str]]:
    path = Path(spec)
    if path.is_dir():
        return DictOutputs(load_mlflow_model(path)), None, {}
    if path.is_file():
        model, run_id = model_from_checkpoint(path)
        try:  # the checkpoint names its training run: nest under it and take its data options
            return model, run_id, _run_params(run_id) if run_id else {}
        except ValueError:
            return model, None, {}
    params = _run_params(spec)
    where = next((w for w in ("checkpoint", "game_target") if mlflow.MlflowClient().list_artifacts(spec, w)), None)
    dest = Path(mlflow.artifacts.download_artifacts(run_id=spec, artifact_path=where)) if where else None
    files = (sorted(dest.glob("*.pt")) if dest.is_dir() else [dest]) if dest else []
    if not files:
        raise ValueError(f"run {spec} has no checkpoint or game_target artifact (was it made by veil train-fr or "
                         "veil train-agent?)")
    model, _ = model_from_checkpoint(files[0])
    return model, spec, params


def load_eval_model(spec: str | None, split, args: argparse.Namespace, target_arch: str | None):
    """The evaluation model: a given file (a cached eval-model ``.pt``), or trained and cached; on
    the device the options name."""
    ev = _eval_model(spec, split, args, target_arch)
    ev.model.to(device_config(args).resolve())
    return ev


def _eval_model(spec: str | None, split, args: argparse.Namespace, target_arch: str | None):
    if spec:
        path = Path(spec)
        if not path.is_file():
        
            dest = mlflow.artifacts.download_artifacts(run_id=spec, artifact_path="eval_model")
            files = sorted(Path(dest).glob("*.pt"))
            if not files:
                raise ValueError(f"run {spec} has no eval_model/*.pt artifact")
            path = files[0]
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = EvalModelConfig(**state["config"])
        model = build_eval_model(split, cfg)
        model.load_state_dict(state["model"])
        return EvalModel(model.eval(), cfg, dict(state["metrics"]), path, cached=True)
    arch = args.eval_arch
    if target_arch == arch:
        print(f"warning: the evaluation model has the target's architecture ({arch}); use --eval-arch to change it")
    return train_eval_model(split, EvalModelConfig(model=arch, epochs=args.eval_epochs, seed=args.seed,
                                                   weights=args.eval_weights),
                            device=device_config(args))


def _log_eval_model(ev, split_summary: dict) -> str:
    """Log the evaluation model once per cache file, as its own top-level run (every attack that
    scores with it names it in its ``veil.eval_run`` tag; it belongs to no one target); returns
    that run's ID. A model trained just now gets a run that starts when its training did."""
    key = ev.path.name if ev.path else "uncached"
    found = mlflow.search_runs(filter_string=f"tags.`veil.eval_cache` = '{key}'", max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    seconds = ev.metrics.get("train_seconds") if not ev.cached else None
    started = time.time() - seconds if seconds else None
    with tracking.start_run(run_name=f"eval-model-{ev.config.model}", started=started) as run:
        mlflow.set_tags({"veil.kind": "eval-model", "veil.eval_cache": key})
        tracking.log_params({"eval": asdict(ev.config), "split": split_summary})
        tracking.log_metrics({f"test_{k}": v for k, v in ev.metrics.items()}, step=0)
        if ev.path:
            tracking.log_file(ev.path, "eval_model")
        return run.info.run_id


def attack_settings(args: argparse.Namespace) -> AttackSettings:
    """The harness settings the attack options describe (``veil attack`` and ``veil benchmark``)."""
    settings: dict[str, Any] = {"seeds": args.restarts}
    for option, key in (("steps", "steps"), ("lomma", "lomma"), ("gan_seconds", "max_seconds"),
                        ("gan_steps", "gan_steps")):
        if getattr(args, option, None):
            settings[key] = getattr(args, option)
    if getattr(args, "gan_seconds", None) == 0:  # 0: no time cap, the GAN trains all its steps
        settings["max_seconds"] = None
    return AttackSettings.from_mapping(settings, where="the attack options")


def cmd_attack(args: argparse.Namespace) -> int:



    if args.threads:
        torch.set_num_threads(args.threads)
    tracking.setup(args.tracking_uri, args.experiment)
    names = [a.strip() for a in args.attack.split(",") if a.strip()]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {sorted(ATTACKS)}")
    device = device_config(args)
    target, run_id, params = load_target(args.model, device.resolve())
    if args.data is None:
        if not params:
            raise ValueError("--data is needed when --model is a file (a run ID carries its data options)")
        data_cfg, split_cfg = data_from_params(params)
    else:
        data_cfg, split_cfg = data_configs(args)
    split = split_identities(load_faces(data_cfg), split_cfg)
    n_out = target(split.test_images[:1].float().div(255.0).to(device.resolve()))["logits"].shape[1]
    if n_out != split.num_private:
        raise ValueError(f"the target has {n_out} classes but the split has {split.num_private} private identities; "
                         "pass the data options it was trained with")
    ev = load_eval_model(args.eval_model, split, args, params.get("model.name"))
    acc = target_accuracy(target, split)
    print(f"target: {args.model}: private test top-1 {acc['top1']:.1%}; evaluation model {ev.config.model}: "
          f"{ev.metrics['top1']:.1%}{' (cached)' if ev.cached else ''}")
    settings = attack_settings(args)
    reports: list[AttackReport] = []
    out_root = Path(args.out_dir)
    eval_run = _log_eval_model(ev, split.summary())  # before any attack run: it is top-level
    target_run = mlflow.get_run(run_id) if run_id else None
    target_name = (target_run.info.run_name if target_run else None) or Path(args.model).name
    # a run ID's attacks hang under its run, which stays as it was (finished, its times those of
    # its training); a file's under a run of their own
    group = contextlib.nullcontext() if run_id else tracking.start_run(run_name=f"attack-{target_name}")
    with group:
        for name in names:
            cfg = HarnessConfig(identities=args.identities, attack_seeds=args.attack_seeds, settings=settings,
                                seed=args.seed)
            t0 = time.perf_counter()
            with tracking.start_run(run_name=f"attack-{name}-{target_name}", parent_run_id=run_id,
                                    nested=run_id is None) as child:  # opened before the attack: its duration
                mlflow.set_tags({"veil.kind": "attack", "veil.attack": name, "veil.eval_run": eval_run,
                                 "veil.target_run": run_id or "", "veil.target": args.model,
                                 "veil.defense": target_run.data.tags.get("veil.defense", "") if target_run else ""})
                tracking.log_params({"attack": {"name": name, "attack_seeds": args.attack_seeds,
                                                **settings.to_dict()}, "device": str(device.resolve())})
                report = run_attack(name, target, split, ev.model, cfg)
                report.context = {"target": args.model, "target_top1": acc["top1"], "num_private": split.num_private,
                                  "eval_model": f"{ev.config.model} ({ev.metrics['top1']:.1%} private test top-1, "
                                                f"run {eval_run})", "data": split.source}
                tracking.log_params({"attack": {"identities": len(report.classes)}})
                metrics = {f"attack.{k}": v for k, v in report.summary.items() if isinstance(v, float)}
                metrics.update({f"attack.{k}_std": s for k, (_, s) in report.spread.items()})
                metrics.update({"attack.seconds": sum(report.seconds), "target.top1": acc["top1"]})
                tracking.log_metrics({k: v for k, v in metrics.items() if v == v and abs(v) != float("inf")}, step=0)
                paths = report.save(out_root / child.info.run_id)
                for p in paths.values():
                    tracking.log_file(p, "report")
            if run_id:  # the headline number on the target's own run, where the runs table shows it
                tracking.log_headline(run_id, {f"attack.{name}.top1": report.summary["top1"]})
            print(f"{name}: attack top-1 {report.summary['top1']:.1%} ({time.perf_counter() - t0:.0f}s); "
                  f"report in {paths['markdown']}")
            reports.append(report)
    print("\n" + AttackReport.markdown_header())
    for r in reports:
        print(r.markdown_row())
    print("\nlook at the reports with:  veil ui")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil attack`` sub-command."""
    a = sub.add_parser("attack", help="run model-inversion attacks on a trained FR model and report the leak",
                       description="Attack a trained FR model (an MLflow run ID of veil train-fr, a veil checkpoint "
                                   "or an MLflow model folder), score the reconstructions with an independent "
                                   "evaluation model (trained once per data/split and cached), and log a JSON/"
                                   "Markdown report and a reconstruction grid to MLflow (nested under the training "
                                   "run for a run ID).")
    a.add_argument("--model", required=True, metavar="RUN_ID_OR_PATH", help="the target model")
    a.add_argument("--attack", default="pca", help="attack(s), comma-separated: pca, whitebox, gmi, kedmi, plgmi "
                                                   "(default: pca)")
    a.add_argument("--identities", type=count(0), default=0, help="private identities attacked (default: 0 = all)")
    a.add_argument("--attack-seeds", type=count(1), default=2, help="independent attack runs (default: 2)")
    a.add_argument("--restarts", type=count(1), default=2, help="reconstructions per identity per run (default: 2)")
    a.add_argument("--steps", type=count(1), default=None, help="optimization steps (default: each attack's own)")
    a.add_argument("--lomma", action="store_true", help="GAN attacks: LOMMA's logit loss and model augmentation")
    a.add_argument("--gan-seconds", type=float, default=None,
                   help="GAN attacks: time cap of GAN training; 0 = none, train all --gan-steps "
                        "(default: 180 s per GAN)")
    a.add_argument("--gan-steps", type=count(1), default=None, help="GAN attacks: generator updates (default: 2000)")
    a.add_argument("--eval-model", default=None, metavar="RUN_ID_OR_PATH",
                   help="evaluation model (default: train one, or reuse the cached one for this data and split)")
    a.add_argument("--eval-arch", choices=("resnet18", "cnn", "inception"), default="resnet18",
                   help="evaluation model architecture; differs from the target's (default: resnet18)")
    a.add_argument("--eval-epochs", type=count(1), default=40, help="evaluation model training epochs (default: 40)")
    a.add_argument("--eval-weights", default=EvalModelConfig.weights, metavar="FILE",
                   help="a local pretrained file the evaluation model starts from (e.g. InceptionResnetV1 VGGFace2 "
                        "weights with --eval-arch inception); never downloaded, its SHA-256 keys the cache")
    a.add_argument("--seed", type=int, default=0, help="seed of identities and attack runs (default: 0)")
    a.add_argument("--threads", type=count(1), default=None, help="torch CPU threads (default: all cores)")
    a.add_argument("--out-dir", default="reports", help="where reports are written (default: reports)")
    add_data_args(a)
    a.set_defaults(data=None, handler=cmd_attack)  # data None: take the data options from the target's run
    add_device_args(a)
    add_tracking_args(a)
