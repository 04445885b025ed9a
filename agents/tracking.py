"""MLflow plumbing: veil's local store, batched metric logging, image grids and model logging.

MLflow 3 refuses the old file store unless forced, so veil keeps its runs in
``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts`` (or any URI given
by ``--tracking-uri`` / ``$VEIL_TRACKING_URI``). ``veil ui`` serves the same store.

The layout: each ``veil train-fr`` / ``train-agent`` run is top-level, tagged ``veil.kind`` and
``veil.defense`` (what it trained with, ``policy``/``schedule`` included), with its natural top-1
(``final_test_top1``) and, once attacked, each attack's top-1 (``attack.<name>.top1``, copied by
``log_headline``). Its attacks are child runs ``attack-<name>-<target run name>``; the evaluation
model that scored them is one top-level run per cache file (``veil.kind = eval-model``), which the
attack runs name in ``veil.eval_run``. Runs start and end around their work (``start_run``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.entities import Metric, Param
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry
from torch import nn
from torchvision.utils import make_grid

import veil
from veil.attacks.harness import ATTACKS
from veil.recognition.device import module_device
from veil.recognition.models import LogitsOnly

DEFAULT_EXPERIMENT = "veil"
HOST = socket.gethostname()
_STARTED: list[str] = []  # the runs this process started or resumed, for marking them when it is stopped
_EXPERIMENT: list[str] = []  # the experiment setup() chose last


RUNS_VIEW = "veil-key-numbers"
"""The saved view of the runs table that ``veil ui`` opens (an experiment tag MLflow's UI reads)."""
KEY_COLUMNS = (["tags.`veil.kind`", "tags.`veil.row`", "tags.`veil.defense`", "metrics.`final_test_top1`", "metrics.`final_fr.top1`"]
               + [f"metrics.`attack.{a}.top1`" for a in ATTACKS]
               + ["metrics.`attack.pca.nn_pixel`", "metrics.`attack.pca.sink_share`", "metrics.`fit_seconds`"])
"""The runs table's columns in that view: what a run is, its natural top-1, each attack's top-1,
and the PCA attack's two checks on top-1 (the pixel-space neighbour's identity, the sink share)."""


def runs_view_tags(now_ms: int | None = None) -> dict[str, str]:
    """Experiment tags that make MLflow 3's UI show runs, not GenAI traces (``mlflow.experimentKind``),
    and save the view ``RUNS_VIEW`` with ``KEY_COLUMNS`` shown (``mlflow.sharedViewState.<key>``,
    MLflow's saved-view envelope around the runs page's UI state)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    state = {"selectedColumns": KEY_COLUMNS, "orderByKey": "attributes.start_time", "orderByAsc": False}
    view = {"name": "veil: key numbers", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return {"mlflow.experimentKind": "custom_model_development",
            f"mlflow.sharedViewState.{RUNS_VIEW}": json.dumps(view)}


def runs_url(base: str, experiment_id: str) -> str:
    """The UI's runs table of an experiment, in the model-training workflow, with veil's saved view."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}")


def prepare_ui(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Make sure the store has the experiment, tagged for the runs view (``runs_view_tags``);
    returns its ID."""
    exp_id = setup(tracking_uri, experiment)
    client = MlflowClient()
    for key, value in runs_view_tags().items():
        client.set_experiment_tag(exp_id, key, value)
    return exp_id


def log_headline(run_id: str, metrics: dict[str, float]) -> None:
    """Copy headline numbers (an attack's top-1 as ``attack.<name>.top1``) to a top-level run that
    may be finished (its status and times are not touched), so the runs table shows them."""
    ts = int(time.time() * 1000)
    # 6 decimals: a float32 fraction shows as 0.15, not 0.15000000596 (the runs table cuts it off)
    items = [Metric(k, round(float(v), 6), ts, 0) for k, v in metrics.items() if math.isfinite(v)]
    if items:
        MlflowClient().log_batch(run_id, metrics=items)


def store_dir() -> Path:
    """The local store folder: ``$VEIL_MLRUNS`` or ``./mlruns``."""
    return Path(os.environ.get("VEIL_MLRUNS", "mlruns")).resolve()


def default_tracking_uri() -> str:
    """``$VEIL_TRACKING_URI``, else the sqlite database in the local store."""
    uri = os.environ.get("VEIL_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (store_dir() / "artifacts").as_uri()


@contextlib.contextmanager
def start_run(*, started: float | None = None, continue_work: bool = False,
              **kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """``mlflow.start_run`` that records which process runs it (``veil.host``, ``veil.pid``), so a
    run whose process died (``kill -9``) can be told from one still going and marked KILLED.

    A run's start and end bracket its work, so the UI's durations are true:

    - ``started`` (``time.time()`` seconds): a new run's start time, for work done before the run
      could be opened (a model trained, then found worth logging);
    - reopening a FINISHED run (``run_id``) to add to it (attacks on a trained model, a summary)
      keeps it FINISHED with its end time, even if the block fails, unless ``continue_work``
      (``--resume`` of training: the run's work goes on, its end moves)."""
    client = MlflowClient()
    run_id = kwargs.get("run_id")
    keep_end = None
    if run_id and not continue_work:
        info = client.get_run(run_id).info
        if info.status == "FINISHED" and info.end_time:
            keep_end = info.end_time
    if started is not None and not run_id:
        tags = {**(kwargs.pop("tags", None) or {})}
        if kwargs.get("nested") or kwargs.get("parent_run_id"):
            parent = kwargs.pop("parent_run_id", None) or mlflow.active_run().info.run_id
            tags["mlflow.parentRunId"] = parent
        run_name = kwargs.pop("run_name", None)
        if run_name:
            tags["mlflow.runName"] = run_name
        created = client.create_run(_experiment_id(), start_time=int(started * 1000), run_name=run_name,
                                    tags=context_registry.resolve_tags(tags))  # user, source, as start_run's
        kwargs.pop("parent_run_id", None)
        kwargs["run_id"] = created.info.run_id
    try:
        with mlflow.start_run(**kwargs) as run:
            mlflow.set_tags({"veil.host": HOST, "veil.pid": str(os.getpid())})
            if keep_end is None:
                _STARTED.append(run.info.run_id)
            yield run
    finally:
        if keep_end is not None:
            client.set_terminated(run_id, "FINISHED", end_time=keep_end)


@contextlib.contextmanager
def attach(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Make a run another process holds open (a benchmark's parent run, in the driver) this
    process's active run, so the runs started here nest under it; it is left RUNNING for its owner
    to end (a Ray task must not finish its driver's run)."""
    run = mlflow.start_run(run_id=run_id)
    try:
        yield run
    finally:
        mlflow.end_run(status="RUNNING")


def _experiment_id() -> str:
    """The active experiment: the one ``setup`` chose, else MLflow's default."""
    if _EXPERIMENT:
        return _EXPERIMENT[-1]
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


def mark_stopped(reason: str) -> list[str]:
    """Mark every run this process started that did not finish as KILLED, noting ``reason`` (the
    process was stopped by a signal); returns their IDs."""
    client, marked = MlflowClient(), []
    for run_id in dict.fromkeys(_STARTED):
        try:
            if client.get_run(run_id).info.status != "FINISHED":
                client.set_tag(run_id, "veil.stopped", reason)
                client.set_terminated(run_id, "KILLED")
                marked.append(run_id)
        except Exception:  # noqa: BLE001 - the store may be what failed; the signal's message still goes out
            pass
    return marked


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def mark_orphans(experiment_id: str) -> list[str]:
    """Runs of this machine left RUNNING by a process that is gone (``kill -9``, a crash): mark
    them KILLED so a rerun's tables and the UI do not show them as going on; returns their IDs."""
    client, marked = MlflowClient(), []
    runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                                             f"tags.`veil.host` = '{HOST}'", max_results=1000)
    for run in runs:
        pid = run.data.tags.get("veil.pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "veil.stopped", f"orphaned: its process {pid} is gone")
            client.set_terminated(run.info.run_id, "KILLED")
            marked.append(run.info.run_id)
    if marked:
        print(f"note: marked {len(marked)} MLflow run(s) left RUNNING by a process that is gone as KILLED")
    return marked


def setup(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at veil's store and return the experiment id (created if missing, with
    its artifacts beside the database rather than in MLflow's ``./mlartifacts`` default).

    On a SQLite store the first use is serialized by a file lock beside the database: MLflow
    creates and migrates a fresh database on first contact, and two veil commands started at
    once on a fresh clone would otherwise race in that migration (alembic ``CommandError``,
    ``duplicate column``) or in creating the same experiment."""
    uri = tracking_uri or default_tracking_uri()
    lock = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(db.with_name(db.name + ".lock"))
    with lock:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is not None:
            mlflow.set_experiment(experiment_id=exp.experiment_id)
            mark_orphans(exp.experiment_id)
            _EXPERIMENT.append(exp.experiment_id)
            return exp.experiment_id
        location = default_artifact_root() if uri.startswith("sqlite:") else None
        exp_id = mlflow.create_experiment(experiment, artifact_location=location, tags=runs_view_tags())
        mlflow.set_experiment(experiment_id=exp_id)
        _EXPERIMENT.append(exp_id)
        return exp_id


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` for the block (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def log_params(params: dict[str, Any]) -> None:
    """Log a nested dict of parameters in one batch call (``a.b`` keys for nested dicts)."""
    run = mlflow.active_run()
    flat = _flatten(params)
    items = [Param(k, v) for k, v in flat.items()]
    client = MlflowClient()
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Log many metrics in one ``log_batch`` (about 50x cheaper on sqlite than one by one)."""
    run = mlflow.active_run()
    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
    MlflowClient().log_batch(run.info.run_id, metrics=items)


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=1), artifact_file)


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """uint8 or [0, 1] images (B, C, H, W) -> an HWC uint8 grid (grey repeated to RGB)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0)
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def log_image_grid(images: torch.Tensor, artifact_file: str, nrow: int = 8) -> None:
    mlflow.log_image(image_grid(images, nrow).numpy(), artifact_file)


def samples_per_identity(images: torch.Tensor, labels: torch.Tensor, n_ids: int = 8, per_id: int = 8) -> torch.Tensor:
    """The first ``per_id`` images of the first ``n_ids`` identities, identity-major."""
    rows = []
    for c in labels.unique()[:n_ids].tolist():
        rows.append(images[labels == c][:per_id])
    return torch.cat(rows)


@contextlib.contextmanager
def veil_code_tree(*subpackages: str) -> Iterator[Path]:
    """A temporary ``veil/`` package for a logged model's ``code_paths``: ``veil/__init__.py`` and the
    named subpackages (e.g. ``"recognition"``) under their ``veil`` names, without ``__pycache__``,
    so the model's code, which imports ``veil.X``, loads where veil is not installed."""
    with tempfile.TemporaryDirectory(prefix="veil-code-") as tmp:
        root = Path(tmp) / "veil"
        root.mkdir()
        shutil.copy2(veil.__file__, root / "__init__.py")
        for name in subpackages:
            spec = importlib.util.find_spec(f"veil.{name}")
            if spec is None or not spec.submodule_search_locations:
                raise ValueError(f"veil.{name} is not a subpackage of veil")
            shutil.copytree(next(iter(spec.submodule_search_locations)), root / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        yield root


def log_fr_model(model: nn.Module, example: torch.Tensor, name: str = "model") -> None:
    """Log the FR model as an MLflow PyTorch model with an input example and signature.

    Requirements are given explicitly and a ``veil`` tree holding ``veil.recognition`` is bundled
    (``veil_code_tree``), so MLflow neither probes the environment in a subprocess nor needs veil
    installed to load it.
    """
    if module_device(model).type != "cpu":  # logged to load on any machine; the trained copy stays put
        model = copy.deepcopy(model).cpu()
    wrapped = LogitsOnly(model).eval()
    with torch.no_grad():
        out = wrapped(example)
    signature = infer_signature(example.numpy(), out.numpy())
    tv = __import__("torchvision").__version__.split("+")[0]
    with veil_code_tree("recognition") as code:
        mlflow.pytorch.log_model(
            wrapped, name=name, input_example=example.numpy(), signature=signature,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={tv}"],
            code_paths=[str(code)],
        )


def log_file(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)
