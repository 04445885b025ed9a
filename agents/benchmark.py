"""``veil benchmark``: every defense under every attack, same data, budget and seeds.

What runs is a plan (``plan.py``: a TOML file given with ``--config``, flags over it). Each cell
(row x target seed) trains a target with ``veil train-fr``'s code (a ``use = "target"`` row takes a
given checkpoint instead, e.g. a ``veil train-agent`` game's FR model), measures its natural accuracy,
runs every attack through the harness and writes ``cells/<row>-s<seed>.json`` atomically after
training and after each attack, so an interrupted benchmark resumes where it stopped and a rerun
with more attacks attacks the saved targets instead of retraining them. The summary (Markdown,
CSV, a privacy-utility plot with the Pareto front, reconstruction grids) is rebuilt from the
cells. In MLflow: one parent run, one nested training run per cell, one nested attack run under it.
"""

from __future__ import annotations

import argparse
import fcntl
import filecmp
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from veil.attacks.evaluation import EvalModelConfig, train_eval_model
from veil.attacks.harness import ATTACKS, HarnessConfig, run_attack, target_accuracy
from veil.attacks.proxy import ProxyConfig, privacy_proxies
from veil.recognition import MODEL_NAMES, DeviceConfig, FaceSplit, TrainerConfig, load_faces, split_identities
from veil.recognition.data import default_data_root

from . import tracking
from .attack_cli import attack_settings, load_target, model_from_checkpoint
from .cluster import ClusterConfig, ray_module, run_tasks
from .options import (
    add_cluster_args,
    add_data_args,
    add_device_args,
    add_tracking_args,
    cluster_config,
    command_parser,
    defense_options,
    device_config,
    given_options,
    row_namespace,
    row_options_from_argv,
)
from .plan import DEFENSE_CHOICES, Plan, Row, calibration_plan, load_plan
from .registry import BEST, mark_best, policy_file
from .schedules import load_schedule
from .tables import METRICS, write_outputs
from .train_fr import FRJob, PolicyUse, Tracking, data_record, first_difference, train_fr


@dataclass
class RunOptions:
    """How a plan is run (not what it measures): where it is logged, rebuild-only, retraining, on
    which device (with which speed options) its targets, evaluation model and attacks run, and
    whether its cells run in this process or as Ray tasks (``cluster``)."""

    tracking: Tracking
    summarize_only: bool = False
    retrain_lost: bool = False
    device: DeviceConfig = field(default_factory=DeviceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # judge_scope seed: the rows whose cells make one seed's block (empty: the plan's rows); a run
    # of some of a plan's rows names all of them, so a seed is kept only when every row agrees
    block_rows: tuple[str, ...] = ()


def _write_json(obj: Any, path: Path) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def cell_job(plan: Plan, name: str, seed: int, track: Tracking,
             device: DeviceConfig = DeviceConfig(device="cpu")) -> FRJob:
    """The ``veil train-fr`` run of one cell: the plan's data and budget, this row's defense and options."""
    row = plan.row(name)
    options = dict(row.options)
    epochs = options.pop("epochs", None) or plan.budget.epochs
    names = row.use.split("+")
    policy = None
    for pol in ("policy", "policy-sampled"):
        if pol in names:
            sample = pol == "policy-sampled" or bool(options.get("policy_sample"))
            policy = PolicyUse(plan.policy_for_seed(seed, name), options.get("policy_warmup"), sample)
            names.remove(pol)
    schedule = row.schedule if "schedule" in names else None
    if schedule:
        names.remove("schedule")
    ns = row_namespace({**options, "defense": ",".join(names) or "none"})
    train = TrainerConfig(epochs=epochs, batch_size=plan.budget.batch_size, lr=plan.budget.lr, seed=seed)
    return FRJob(data=plan.data, split=plan.split, train=train, model=plan.budget.model, weights=plan.budget.weights,
                 defense=defense_options(ns, seed), policy=policy, augment_schedule=schedule,
                 threads=plan.budget.threads,
                 checkpoint=str(Path(plan.out_dir) / "checkpoints" / f"{name}-s{seed}.pt"),
                 tracking=replace(track, run_name=f"{name}-s{seed}"), device=device)


def cell_options(record: dict[str, Any]) -> dict[str, Any]:
    """The row options a cell's target was trained with (cells before plan files kept them as argv)."""
    if "options" in record:
        return record["options"]
    return row_options_from_argv(record.get("train_args", []), f"cell {record.get('defense')}-s{record.get('seed')}")


def check_row_cell(record: dict[str, Any] | None, row: Row, cell: Path) -> None:
    """A resumed cell must have been trained with the options its row has now (none for a built-in)."""
    if record is not None and cell_options(record) != row.options:
        raise ValueError(f"cell {cell} was trained with {cell_options(record)} but its defense now means "
                         f"{row.options}; give the defense a new name or delete the cell to retrain it")
    if record is not None and row.schedule and "schedule" in record \
            and record["schedule"] != load_schedule(row.schedule).to_dict():
        raise ValueError(f"cell {cell} was trained with another schedule than {row.schedule} holds now; give the "
                         "defense a new name or delete the cell to retrain it")
    if record is not None and row.target:  # a target row: the cell's copy must be what the row's file holds now
        given = Path(row.target_for_seed(record["seed"], record["defense"]))
        copy = cell.parent.parent / "checkpoints" / f"{cell.stem}.pt"
        if given.is_file() and copy.is_file() and not filecmp.cmp(given, copy, shallow=False):
            raise ValueError(f"cell {cell} scored another target than {given} holds now; give the defense a new "
                             "name or delete the cell to score the new one")


def _save_cell(record: dict[str, Any], cell: Path) -> dict[str, Any]:
    """Write a cell's record atomically, first taking in the attacks another benchmark process
    has saved to the same cell since this one read it (two processes adding different attacks to
    one target would otherwise each overwrite the other's). A file lock makes the read-merge-write
    one step (the lock is on the cells folder itself, so it leaves no files); a cell file of another
    target (retrained in between) is overwritten, as before."""
    cell.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(cell.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if cell.is_file():
            on_disk = load_cell(cell)
            same = all(on_disk.get(k) == record.get(k) for k in ("defense", "seed", "natural_top1")) \
                and cell_options(on_disk) == cell_options(record)
            if same:
                for attack, result in on_disk.get("attacks", {}).items():
                    record["attacks"].setdefault(attack, result)
                if "proxies" in on_disk:
                    record.setdefault("proxies", on_disk["proxies"])
        _write_json(record, cell)
    finally:
        os.close(folder)  # closing the descriptor releases the lock
    return record


def identity_top1(per_identity: list[dict[str, Any]]) -> dict[str, float]:
    """An attack report's top-1 per attacked identity (``{"7": 0.5, ...}``), kept in the cell so
    whether exposure follows the identity across seeds can be read from committed cells."""
    return {str(int(e["identity"])): float(e["top1"]) for e in per_identity if e.get("top1") is not None}


def _fill_identity_top1(record: dict[str, Any]) -> bool:
    """Give a cell's attacks their per-identity top-1 from the attack's own saved report (cells
    written before it was recorded), where that report is still on disk; True if anything changed."""
    changed = False
    for result in record["attacks"].values():
        if "identity_top1" in result or not result.get("report"):
            continue
        report = Path(str(result["report"])).with_name("report.json")
        if report.is_file():
            try:
                result["identity_top1"] = identity_top1(json.loads(report.read_text()).get("per_identity", []))
                changed = True
            except (ValueError, KeyError, TypeError):
                continue  # a damaged report: the cell simply lacks the per-identity figures
    return changed


def load_cell(path: Path) -> dict[str, Any]:
    """A cell's record, its fields checked (a cell file may have been edited or damaged): a
    ``ValueError`` naming the file and the first bad field."""
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"cell {path} is not JSON ({err})") from None

    def unit(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0

    if not isinstance(record, dict):
        raise ValueError(f"cell {path} is not a cell record")
    attacks = record.get("attacks")
    checks = {"defense": isinstance(record.get("defense"), str), "seed": type(record.get("seed")) is int,
              "natural_top1": unit(record.get("natural_top1")), "natural_top5": unit(record.get("natural_top5", 0.0)),
              "attacks": isinstance(attacks, dict) and all(
                  isinstance(a, dict) and (a.get("top1") is None or unit(a["top1"])) for a in attacks.values()),
              "options": isinstance(record.get("options", {}), dict),
              "proxies": isinstance(record.get("proxies", {}), dict) and all(
                  unit(v) for v in record.get("proxies", {}).values()),
              "train_args": isinstance(record.get("train_args", []), list),
              "target": isinstance(record.get("target", ""), str)}
    bad = next((field for field, ok in checks.items() if not ok), None)
    if bad:
        raise ValueError(f"cell {path}: field {bad!r} is missing or not what veil benchmark writes "
                         f"({str(record.get(bad))[:60]!r})")
    return record


def _read_cell(cell: Path, ckpt: Path, split) -> dict[str, Any] | None:
    """A finished cell's record, or None. Cells written before the collapse check get it from
    their saved target (and are rewritten), so every row can say whether a target learned."""
    if not cell.is_file():
        return None
    record = load_cell(cell)
    if record.get("split", "test") != split.kind:
        raise ValueError(f"cell {cell} was scored on the {record.get('split', 'test')} split and this run scores on "
                         f"the {split.kind} split; use another out_dir (or drop validation to match)")
    if "collapsed" not in record and ckpt.is_file():
        record["collapsed"] = bool(target_accuracy(load_target(str(ckpt))[0], split)["collapsed"])
        _save_cell(record, cell)
    return record


def read_cells(out: Path, defenses: list[str] | set[str], seeds: list[int] | set[int]) -> list[dict[str, Any]]:
    """The finished cells' records in ``out/cells`` for these defenses and seeds (none if the folder is missing)."""
    cells = out / "cells"
    records = [load_cell(f) for f in sorted(cells.glob("*.json"))] if cells.is_dir() else []
    return [r for r in records if r["defense"] in defenses and r["seed"] in seeds]


def eta(finished: int, total: int, elapsed: float) -> str:
    """``, 12 min in, about 40 min left`` from the cells finished so far (empty before the first),
    so a user can tell a three-hour benchmark from a stuck one."""
    if finished == 0:
        return ""
    left = elapsed / finished * (total - finished)
    return f", {elapsed / 60:.0f} min in, about {left / 60:.0f} min left"


def _run_in_this_store(run_id: str, name: str) -> str:
    """``run_id`` if the active experiment holds it, else a new nested run for the cell: a target
    trained under another MLflow store or experiment (an out-dir moved, ``--tracking-uri``
    changed) gets its new attacks logged here instead of failing."""
    try:
        if mlflow.get_run(run_id).info.experiment_id == mlflow.active_run().info.experiment_id:
            return run_id
    except MlflowException:
        pass
    print(f"note: target {name} was trained under another MLflow store or experiment (run {run_id}); "
          "its new attacks are logged under a new run here")
    with tracking.start_run(run_name=name, nested=True) as run:
        mlflow.set_tags({"veil.kind": "fr", "veil.trained_in_run": run_id})
    return run.info.run_id


def check_given_target(path: Path, plan: Plan, split) -> tuple[nn.Module, str | None]:
    """A target row's checkpoint, loaded (``model_from_checkpoint``) and checked against the plan:
    the data and split it records (train-fr's under ``job``, train-agent's at the top), where it
    records them, and its number of classes; returns the model and the MLflow run it names."""
    if not path.is_file():
        raise FileNotFoundError(f"target: no file {path}")
    target, run_id = model_from_checkpoint(path)
    extra = torch.load(path, map_location="cpu", weights_only=True).get("extra", {})
    recorded, wanted = extra.get("job", extra), data_record(plan.data, plan.split)
    for key in ("data", "split"):
        if isinstance(recorded.get(key), dict):  # only what it records: a field added since is not a mismatch
            diff = first_difference(recorded[key], {k: wanted[key].get(k) for k in recorded[key]}, key)
            if diff:
                raise ValueError(f"target {path} was trained on {'other data' if key == 'data' else 'another split'} "
                                 f"than the plan's ({diff})")
    with torch.no_grad():
        n_out = target(split.test_images[:1].float() / 255.0)["logits"].shape[1]
    if n_out != split.num_private:
        raise ValueError(f"target {path} has {n_out} classes but the plan's split has {split.num_private} private "
                         "identities")
    return target, run_id


def _take_target(plan: Plan, defense: str, seed: int, split, ckpt: Path):
    """A target row's cell: its given checkpoint, checked, copied to ``ckpt`` (atomically, so a rerun
    attacks it as a trained cell's target) and logged as a nested run; returns that run, the model
    and its natural accuracy."""
    path = Path(plan.row(defense).target_for_seed(seed, defense))
    target, run_id = check_given_target(path, plan, split)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, ckpt)
    natural = target_accuracy(target, split)
    with tracking.start_run(run_name=f"{defense}-s{seed}", nested=True) as run:
        mlflow.set_tags({"veil.kind": "fr", "veil.defense": defense, "veil.target": str(path),
                         "veil.trained_in_run": run_id or ""})
        tracking.log_metrics({"final_test_top1": natural["top1"], "final_test_top5": natural["top5"]}, step=0)
    return run.info.run_id, target, natural


def _train_target(plan: Plan, track: Tracking, defense: str, seed: int, split, ckpt: Path,
                  device: DeviceConfig = DeviceConfig(device="cpu")):
    """Train one cell's target with its options and seed (``train_fr`` writes ``ckpt``; a target
    row takes its given checkpoint instead); return the FR run, the loaded model and its natural
    accuracy on the test split."""
    if plan.row(defense).use == "target":
        return _take_target(plan, defense, seed, split, ckpt)
    fr_run = train_fr(cell_job(plan, defense, seed, track, device))
    target, _, _ = load_target(str(ckpt), device.resolve())
    return fr_run, target, target_accuracy(target, split)


def retrain_lost_target(plan: Plan, track: Tracking, defense: str, seed: int, split, record: dict[str, Any],
                        ckpt: Path, device: DeviceConfig = DeviceConfig(device="cpu")):
    """Train a cell's lost target again with the cell's options and seed and return it, if it
    reaches exactly the recorded natural accuracy (top-1 and top-5 on the same test images); else
    set the new checkpoint aside and stop, since attacks on another model would be mixed into the
    cell. One-thread training on the same torch and CPU reproduces; other setups may not."""
    again = "copying it again from its file" if plan.row(defense).use == "target" else "training it again"
    print(f"target {ckpt} is gone: {again} (seed {seed}) and checking it against the cell")
    fr_run, target, natural = _train_target(plan, track, defense, seed, split, ckpt, device)
    aside = ckpt.with_name(ckpt.stem + ".mismatch.pt")
    try:
        got = _check_reproduces(natural, split, record, f"the retrained target of cell {defense} seed {seed}",
                                f"Training did not reproduce (another torch, CPU or thread count?). The cell is "
                                f"unchanged; the new target is set aside at {aside}. Delete the cell to start its "
                                "row over with fresh targets.")
    except ValueError:
        ckpt.replace(aside)
        raise
    record["retrained_from_run"], record["fr_run"] = record["fr_run"], fr_run
    print(f"target {defense} seed {seed} reproduced (top-1 {got[0]:.4f}, top-5 {got[1]:.4f}); attacking it")
    return target


def _check_reproduces(natural: dict[str, Any], split, record: dict[str, Any], what: str,
                      advice: str) -> tuple[float, float]:
    """Raise unless a target's ``natural`` accuracy (``target_accuracy``) is the cell's recorded top-1
    and top-5 (within half a test image): attacks on another model must not be mixed into the cell.
    Returns (top-1, top-5)."""
    tol = 0.5 / len(split.test_labels)
    got, want = (natural["top1"], natural["top5"]), (record["natural_top1"], record["natural_top5"])
    if any(abs(g - w) > tol for g, w in zip(got, want)):
        raise ValueError(f"{what} reaches top-1 {got[0]:.4f} / top-5 {got[1]:.4f}, the cell recorded "
                         f"{want[0]:.4f} / {want[1]:.4f}: it is not the model the cell measured. {advice}")
    return got


def _set_aside_if_partial(ckpt: Path) -> Path | None:
    """A checkpoint that stopped before its last epoch (a training interrupted after the cell was
    recorded, e.g. a --retrain-lost run) is not the cell's target: move it to ``.partial.pt``, so
    the cell counts as lost, and return the new path; None for a finished checkpoint."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    done, total = state.get("epoch"), (state.get("config") or {}).get("epochs")
    if done is None or total is None or done >= total:
        return None
    aside = ckpt.with_name(ckpt.stem + ".partial.pt")
    ckpt.replace(aside)
    print(f"target {ckpt} stopped at epoch {done} of {total} (an interrupted training): set aside at {aside}; "
          "the cell's target counts as lost")
    return aside


def headline_metrics(attack: str, summary: dict[str, Any]) -> dict[str, float]:
    """What an FR run shows of an attack on it, beside its accuracy: top-1 and the two checks that
    top-1 alone can be fooled by (the pixel-space neighbour's identity, the sink share)."""
    keys = {"top1": "top1", "nn_pixel": "nn_pixel_acc", "sink_share": "sink_share"}
    return {f"attack.{attack}.{k}": float(summary[v]) for k, v in keys.items() if summary.get(v) is not None}


def row_headline(records: list[dict[str, Any]]) -> dict[str, float]:
    """A row's numbers as its FR runs carry them, averaged over its seeds."""
    per_cell = [{"final_test_top1": r["natural_top1"],
                 **{k: v for a, res in r["attacks"].items() for k, v in headline_metrics(a, res).items()}}
                for r in records]
    keys = sorted({k for m in per_cell for k in m})
    return {k: float(np.mean([m[k] for m in per_cell if k in m])) for k in keys}


def run_cell(plan: Plan, opts: RunOptions, defense: str, seed: int, split, ev,
             record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one target (unless ``record`` says it was trained) and run the attacks it lacks;
    the record is rewritten to ``cells/`` after each attack, so an interruption loses one attack
    at most and a rerun with more attacks attacks the saved target instead of retraining."""
    t0 = time.perf_counter()
    out = Path(plan.out_dir)
    cell = out / "cells" / f"{defense}-s{seed}.json"
    ckpt = out / "checkpoints" / f"{defense}-s{seed}.pt"
    if record is None:
        fr_run, target, natural = _train_target(plan, opts.tracking, defense, seed, split, ckpt, opts.device)
        record = {"defense": defense, "seed": seed, "fr_run": fr_run, "natural_top1": natural["top1"],
                  "natural_top5": natural["top5"], "collapsed": bool(natural["collapsed"]), "attacks": {},
                  "split": split.kind, "options": plan.row(defense).options,
                  "seconds": time.perf_counter() - t0}
        if plan.row(defense).schedule:
            record["schedule"] = load_schedule(plan.row(defense).schedule).to_dict()
        if plan.row(defense).target:
            record["target"] = plan.row(defense).target_for_seed(seed, defense)
        _write_json(record, cell)
        if record["collapsed"]:
            print(f"warning: target {defense} seed {seed} collapsed (its output does not depend on the input); its "
                  "attack scores are those of a model that learned nothing. The table counts it and says so.")
    elif ckpt.is_file() and (plan.row(defense).use == "target" or _set_aside_if_partial(ckpt) is None):
        target, _, _ = load_target(str(ckpt), opts.device.resolve())
        _check_reproduces(target_accuracy(target, split), split, record, f"the target {ckpt} of cell {defense} seed {seed}",
                          "Delete the cell (or the checkpoint) to train it again.")
    elif opts.retrain_lost or plan.row(defense).use == "target":  # a given target is copied again
        target = retrain_lost_target(plan, opts.tracking, defense, seed, split, record, ckpt, opts.device)
        _write_json(record, cell)
    else:
        raise FileNotFoundError(f"cell {cell} lacks attacks but its target {ckpt} is gone; pass --retrain-lost to "
                                "train it again with the same options and seed (kept only if it reaches the "
                                "recorded accuracy), or delete the cell file to start the cell over")
    target = target.to(opts.device.resolve())  # a given target's file loads on the CPU; attacks run where it is
    missing = [a for a in plan.attacks.names if a not in record["attacks"]]
    settings = attack_settings(plan.attacks)
    record["fr_run"] = _run_in_this_store(record["fr_run"], f"{defense}-s{seed}")
    with tracking.start_run(run_id=record["fr_run"], nested=True):
        mlflow.set_tag("veil.row", defense)  # the plan's row; veil.defense names what train-fr applied
        for attack in missing:
            t1 = time.perf_counter()
            # the attack's run is open while it works, so its duration in the UI is the attack's
            with tracking.start_run(run_name=f"attack-{attack}-{defense}-s{seed}", nested=True) as child:
                mlflow.set_tags({"veil.kind": "attack", "veil.attack": attack, "veil.defense": defense})
                report = run_attack(attack, target, split, ev.model,
                                    HarnessConfig(identities=plan.attacks.identities,
                                                  attack_seeds=plan.attacks.attack_seeds, settings=settings, seed=seed))
                report.context.update({"target": str(ckpt), "defense": defense, "seed": seed,
                                       "target_top1": record["natural_top1"]})
                tracking.log_metrics({**{f"attack.{k}": float(v) for k, v in report.summary.items()
                                         if isinstance(v, float) and math.isfinite(v)},
                                      "attack.seconds": float(sum(report.seconds))}, step=0)
                paths = report.save(out / "reports" / f"{defense}-s{seed}-{attack}")
                for p in paths.values():
                    tracking.log_file(p, "report")
            tracking.log_headline(record["fr_run"], headline_metrics(attack, report.summary))
            record["attacks"][attack] = {**{k: report.summary.get(k) for k in METRICS},
                                         "identity_top1": identity_top1(report.per_identity),
                                         "seconds": sum(report.seconds), "report": str(paths["markdown"]),
                                         "grid": str(paths["grid"]), "attack_run": child.info.run_id,
                                         "evaluator": ev.fingerprint, **report.extra.get("budget", {})}
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - t1
            _save_cell(record, cell)
    if "proxies" not in record:  # seconds: the candidates for a cheap privacy reward, checked against the attacks
        record["proxies"] = privacy_proxies(target, split, ev.model, ProxyConfig(seed=seed))
        _save_cell(record, cell)
    return record


def judges_found(records: list[dict[str, Any]], attacks: list[str]) -> dict[int, set[Any]]:
    """Per seed, the evaluation models that scored these cells' ``attacks`` (None: a cell from
    before the record)."""
    found: dict[int, set[Any]] = {}
    for x in records:
        found.setdefault(x["seed"], set()).update(x["attacks"][a].get("evaluator") for a in attacks
                                                  if a in x["attacks"])
    return found


def seed_judges(plan: Plan, seeds: list[int], evaluator: str, rows: tuple[str, ...] = ()) -> dict[int, str]:
    """The evaluation model that judges each seed's cells: ``evaluator`` (this machine's), except,
    with ``judge_scope = "seed"``, a seed whose cells (every row, every attack) are finished and were
    all judged by one other model, which keeps it (``rows``: the block's rows, default the plan's).
    Judges trained on two machines differ in their last bits, so a plan too long for one machine is
    run a whole seed at a time."""
    judges = {s: evaluator for s in seeds}
    if plan.attacks.judge_scope != "seed":
        return judges
    names = rows or plan.row_names()
    records = read_cells(Path(plan.out_dir), names, seeds)
    finished = [x for x in records if all(a in x["attacks"] for a in plan.attacks.names)]
    for s, found in judges_found(finished, plan.attacks.names).items():
        if sum(x["seed"] == s for x in finished) == len(names) and len(found) == 1 and None not in found:
            judges[s] = found.pop()
    return judges


def cell_state(plan: Plan, d: str, s: int, split, evaluator: str,
               quiet: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
    """A cell's saved record (None: not trained) and the attacks it still lacks (``proxies`` too,
    where its target is saved but they were never computed); attacks scored by another evaluation
    model than ``evaluator`` count as lacking. With ``judge_scope = "seed"`` such a cell whose target
    is gone is set aside (``cells/superseded/``) and trained again: its seed is redone here."""
    out = Path(plan.out_dir)
    cell = out / "cells" / f"{d}-s{s}.json"
    ckpt = out / "checkpoints" / f"{d}-s{s}.pt"
    done = _read_cell(cell, ckpt, split)
    check_row_cell(done, plan.row(d), cell)  # built-ins: no options, always {}
    attacks = plan.attacks.names
    for a in [a for a in attacks if done is not None and a in done["attacks"]]:
        scored_by = done["attacks"][a].get("evaluator")  # None: a cell from before this record
        if scored_by is not None and scored_by != evaluator:
            if not quiet:
                print(f"cell {d} seed {s}: {a} was scored by another evaluation model ({scored_by}, now "
                      f"{evaluator}); rerunning it so every row is judged by the same model")
            if plan.attacks.judge_scope == "seed" and not ckpt.is_file():
                aside = out / "cells" / "superseded" / f"{d}-s{s}-{scored_by.split('@')[0]}.json"
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(cell, aside)
                if not quiet:
                    print(f"cell {d} seed {s}: its target is not here; set aside as {aside}, trained again")
                return None, list(attacks)
            del done["attacks"][a]
    if done is not None and _fill_identity_top1(done):
        _save_cell(done, cell)
    missing = [a for a in attacks if done is None or a not in done["attacks"]]
    if done is not None and "proxies" not in done and (out / "checkpoints" / f"{d}-s{s}.pt").is_file():
        missing.append("proxies")  # the cheap privacy proxies, computed on the saved target
    return done, missing


_SPLITS: dict[str, FaceSplit] = {}  # a Ray worker's loaded splits, by plan data: its later cells reuse them


def cell_task(ev, plan: Plan, opts: RunOptions, defense: str, seed: int, parent_run_id: str) -> dict[str, Any]:
    """One cell as a Ray task (``cluster.run_tasks``): the same ``run_cell`` as in-process, its MLflow
    runs nested under the driver's benchmark run; a cell already finished (a retry after its worker
    died past the last write) is returned as saved, not run again."""
    if plan.budget.threads:
        torch.set_num_threads(plan.budget.threads)
    key = repr((plan.data, plan.split))
    if key not in _SPLITS:
        _SPLITS[key] = split_identities(load_faces(plan.data), plan.split)
    split = _SPLITS[key]
    tracking.setup(opts.tracking.uri, opts.tracking.experiment)
    with tracking.attach(parent_run_id):
        done, missing = cell_state(plan, defense, seed, split, ev.fingerprint, quiet=True)
        if not missing:
            return done
        return run_cell(plan, opts, defense, seed, split, ev, done)


def for_workers(plan: Plan, opts: RunOptions) -> tuple[Plan, RunOptions]:
    """The plan and options with every path a worker resolves made absolute (out dir, data root,
    a data folder, the default tracking store): a Ray worker does not start in this folder."""
    data = plan.data
    if data.data_root is None and data.source in ("att", "cfp"):
        data = replace(data, data_root=str(default_data_root().resolve()))
    if data.source not in ("synthetic", "att", "cfp") and Path(str(data.source)).exists():
        data = replace(data, source=str(Path(str(data.source)).resolve()))
    uri = opts.tracking.uri or tracking.default_tracking_uri()
    return (replace(plan, out_dir=str(Path(plan.out_dir).resolve()), data=data),
            replace(opts, tracking=replace(opts.tracking, uri=uri)))


def run_on_ray(plan: Plan, opts: RunOptions, todo: list[tuple[str, int]], split, ev) -> list[dict[str, Any]]:
    """The ``todo`` cells as Ray tasks (one per cell, ``threads`` CPUs each, a GPU with a CUDA device),
    in ``todo`` order. The cell store stays the truth: a task writes its cell through it; the driver
    reads the cell back and writes the returned record only where the task's writes did not reach
    this disk (a worker without the shared out dir), merging as ``_save_cell`` does."""
    wplan, wopts = for_workers(plan, opts)
    parent = mlflow.active_run().info.run_id
    cpus = float(plan.budget.threads or 1)
    gpus = opts.cluster.task_gpus(opts.device.device)
    print(f"\n== {len(todo)} cells as Ray tasks on {opts.cluster.address} ({cpus:g} CPU, {gpus:g} GPU each; "
          f"retried {opts.cluster.max_retries} times if a worker dies)")
    got: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for i, record in run_tasks(cell_task, [(d, s, parent) for d, s in todo], opts.cluster, cpus, gpus,
                               shared=(ev, wplan, wopts)):
        d, s = todo[i]
        saved, missing = cell_state(plan, d, s, split, ev.fingerprint, quiet=True)
        got[i] = saved if not missing else _save_cell(record, Path(plan.out_dir) / "cells" / f"{d}-s{s}.json")
        took = eta(len(got), len(todo), time.perf_counter() - t0)
        print(f"cell {d} seed {s}: done on Ray [{len(got)}/{len(todo)}{took}]")
    return [got[i] for i in range(len(todo))]


def run_benchmark(plan: Plan, opts: RunOptions) -> list[dict[str, Any]]:
    """Run (or, with ``summarize_only``, only summarize) every cell of ``plan``; returns the records."""
    if opts.cluster.address and not opts.summarize_only:
        ray_module()  # without Ray, --ray fails in one line before any data loads
    if plan.budget.threads:
        torch.set_num_threads(plan.budget.threads)
    defenses, attacks, seeds = plan.row_names(), plan.attacks.names, plan.seeds
    named = plan.all_rows()
    bad = [d for d in defenses if d not in DEFENSE_CHOICES and d not in named and not opts.summarize_only] \
        + [a for a in attacks if a not in ATTACKS]  # summarize-only reads what the cells say they are
    if bad:
        raise ValueError(f"unknown defense/attack {bad}; defenses: {', '.join(DEFENSE_CHOICES)} and the plan's "
                         f"[defenses.NAME]; attacks: {', '.join(sorted(ATTACKS))}")
    out = Path(plan.out_dir)
    if opts.summarize_only:
        records = read_cells(out, defenses, seeds)
        if not records:
            raise FileNotFoundError(f"--summarize-only: no finished cells of {', '.join(defenses)} in {out / 'cells'}")
        md = write_outputs(records, defenses, attacks, out, plan.compare_to)
        print(md)
        print(f"results (from {len(records)} cells; nothing run): {out / 'results.md'}")
        return records
    policies = {(d, s): plan.policy_for_seed(s, d) for d in defenses if "policy" in plan.row(d).use for s in seeds}
    for spec in sorted(set(policies.values())):
        if not policy_file(spec).is_file():  # a registered one (models:/NAME@best) is downloaded, or fails here
            raise FileNotFoundError(f"policy: no file {spec}")
    for d in [d for d in defenses if plan.row(d).schedule]:
        load_schedule(plan.row(d).schedule)  # a missing or malformed schedule fails before any cell runs
    given = {Path(plan.row(d).target_for_seed(s, d)) for d in defenses if plan.row(d).use == "target" for s in seeds}
    for path in sorted(given):
        if not path.is_file():
            raise FileNotFoundError(f"target: no file {path}")
    split = split_identities(load_faces(plan.data), plan.split)
    for path in sorted(given):
        check_given_target(path, plan, split)  # another split or class count fails before any cell runs
    ev = train_eval_model(split, EvalModelConfig(model=plan.attacks.eval_arch, epochs=plan.attacks.eval_epochs,
                                                 weights=plan.attacks.eval_weights), device=opts.device)
    print(f"benchmark: {split.source}, {split.num_private} private identities; evaluation model {ev.config.model} "
          f"{ev.metrics['top1']:.1%}; {len(defenses)} defenses x {len(seeds)} seeds x {len(attacks)} attacks")
    tracking.setup(opts.tracking.uri, opts.tracking.experiment)
    records: list[dict[str, Any]] = []
    with tracking.start_run(run_name=opts.tracking.run_name or f"benchmark-{Path(str(plan.data.source)).name}"):
        mlflow.set_tags({"veil.kind": "benchmark"})
        tracking.log_params({"benchmark": {"defenses": ",".join(defenses), "attacks": ",".join(attacks),
                                           "seeds": ",".join(map(str, seeds)), "epochs": plan.budget.epochs,
                                           "variants": "; ".join(f"{k}={v.use} {json.dumps(v.options)}"
                                                                 for k, v in named.items()),
                                           "identities": plan.attacks.identities,
                                           "attack_seeds": plan.attacks.attack_seeds,
                                           "eval_model": ev.config.model, "eval_top1": round(ev.metrics["top1"], 4)},
                             "split": split.summary(), **opts.device.params()})

        judges = seed_judges(plan, seeds, ev.fingerprint, opts.block_rows)
        for s in [s for s in seeds if judges[s] != ev.fingerprint]:
            print(f"seed {s}: every cell finished under evaluation model {judges[s]}; kept (judge_scope seed)")

        def state(d: str, s: int, quiet: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
            return cell_state(plan, d, s, split, judges[s], quiet)

        todo = []
        # judged a seed at a time: finish one seed's rows before the next, so a machine's seeds are whole
        order = ([(d, s) for s in seeds for d in defenses] if plan.attacks.judge_scope == "seed"
                 else [(d, s) for d in defenses for s in seeds])
        for d, s in order:
            done, missing = state(d, s)
            if not missing:
                print(f"cell {d} seed {s}: done before, skipped")
                records.append(done)
            else:
                todo.append((d, s))
        t0 = time.perf_counter()
        if opts.cluster.address and todo:
            records += run_on_ray(plan, opts, todo, split, ev)
            todo = []
        for i, (d, s) in enumerate(todo):
            done, missing = state(d, s, quiet=True)  # read again: another benchmark on this out-dir may have run it
            if not missing:
                print(f"\ncell {d} seed {s}: finished by another process meanwhile, skipped")
                records.append(done)
                continue
            print(f"\n== cell {d} seed {s} [{i + 1}/{len(todo)}{eta(i, len(todo), time.perf_counter() - t0)}]"
                  + ("" if done is None else f": target trained before; attacks {', '.join(missing)}"))
            records.append(run_cell(plan, opts, d, s, split, ev, done))
        md = write_outputs(records, defenses, attacks, out, plan.compare_to)
        if len(defenses) == 1:  # a one-row benchmark (each row of veil demo) shows its row's numbers on top
            mlflow.set_tags({"veil.row": defenses[0], "veil.defense": defenses[0]})
            tracking.log_headline(mlflow.active_run().info.run_id, row_headline(records))
        if policies and "none" in defenses and attacks:
            for name, version in mark_best(records, policies, attacks[0]).items():
                print(f"registered policy {name}: @{BEST} is now version {version} (lowest {attacks[0]} top-1 "
                      "within 2 points of none's accuracy)")
        for f in ["results.md", "results.csv", "privacy_utility.png", *(f"grid-{a}.png" for a in attacks)]:
            if (out / f).is_file():
                tracking.log_file(out / f, "benchmark")
    print("\n" + md)
    print(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'privacy_utility.png'}; veil ui to compare")
    return records


def given_plan(args: argparse.Namespace, add: Any, default: Plan | None = None) -> tuple[Plan, set[str]]:
    """A command's plan: its ``--config`` file (or ``default``) with the flags the command line gave
    over it; and which flags those were (``add`` builds the command's parser)."""
    plan = load_plan(args.config) if args.config else (default or Plan())
    given = given_options(command_parser(add), args.argv) - {"config"}
    return plan.with_flags(args, given), given


def plan_from_args(args: argparse.Namespace, add: Any) -> Plan:
    """The plan ``veil benchmark`` runs; a calibration plan runs as its rows (``none`` and one per
    value, on the validation split)."""
    return calibration_plan(given_plan(args, add)[0])


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(Tracking(args.tracking_uri, args.experiment, args.run_name),
                      summarize_only=getattr(args, "summarize_only", False), retrain_lost=args.retrain_lost,
                      device=device_config(args), cluster=cluster_config(args))


def run(args: argparse.Namespace) -> int:
    """CLI entry of ``veil benchmark``."""
    opts = run_options(args)
    if args.config:  # --defenses may run some of the file's rows: a seed's block is all of them
        opts = replace(opts, block_rows=tuple(load_plan(args.config).row_names()))
    run_benchmark(plan_from_args(args, add_parser), opts)
    return 0


def add_plan_args(b: argparse.ArgumentParser) -> None:
    """The options every cell shares (target budget, attack settings, evaluation model, threads),
    defaults from ``Plan``; ``veil calibrate`` takes the same ones."""
    p = Plan()
    b.add_argument("--config", default=None, metavar="PLAN.toml",
                   help="an experiment plan (TOML; see docs/reference.md); the options given here override it")
    b.add_argument("--epochs", type=int, default=p.budget.epochs, help=f"target training epochs (default: {p.budget.epochs})")
    b.add_argument("--batch-size", type=int, default=p.budget.batch_size,
                   help=f"target batch size (default: {p.budget.batch_size})")
    b.add_argument("--lr", type=float, default=p.budget.lr, help=f"target learning rate (default: {p.budget.lr:g})")
    b.add_argument("--model", default=p.budget.model, help=f"target backbone (default: {p.budget.model})")
    b.add_argument("--weights", default=p.budget.weights, metavar="FILE",
                   help="a local pretrained backbone every target starts from (as veil train-fr --weights)")
    a = p.attacks
    b.add_argument("--identities", type=int, default=a.identities, help="identities attacked (default: 0 = all)")
    b.add_argument("--attack-seeds", type=int, default=a.attack_seeds,
                   help=f"attack runs per target (default: {a.attack_seeds})")
    b.add_argument("--restarts", type=int, default=a.restarts,
                   help=f"reconstructions per identity per run (default: {a.restarts})")
    b.add_argument("--steps", type=int, default=a.steps, help="attack optimization steps (default: each attack's)")
    b.add_argument("--gan-seconds", type=float, default=a.gan_seconds,
                   help="time cap per GAN; 0 = none (default: 180 s). A capped GAN trains fewer steps on a "
                        "busier machine: for results that compare across runs, fix --gan-steps and pass 0")
    b.add_argument("--gan-steps", type=int, default=a.gan_steps, help="generator updates per GAN (default: 2000)")
    b.add_argument("--eval-epochs", type=int, default=a.eval_epochs,
                   help=f"evaluation model epochs (default: {a.eval_epochs}; cached)")
    b.add_argument("--eval-arch", choices=MODEL_NAMES, default=a.eval_arch,
                   help=f"evaluation model backbone (default: {a.eval_arch}); differs from the targets'")
    b.add_argument("--eval-weights", default=a.eval_weights, metavar="FILE",
                   help="a local pretrained file the evaluation model starts from (its SHA-256 keys the cache)")
    b.add_argument("--judge-scope", choices=("plan", "seed"), default=a.judge_scope,
                   help="plan: every cell is judged by this machine's evaluation model, other judges' scores are "
                        "redone; seed: a seed whose cells are all finished under one judge keeps it, and an "
                        "unfinished seed is redone under this one (for a plan run over several machines, whose "
                        f"judges differ; rows compare within a seed) (default: {a.judge_scope})")
    b.add_argument("--threads", type=int, default=p.budget.threads, help="torch CPU threads")
    b.add_argument("--retrain-lost", action="store_true",
                   help="a cell that lacks attacks and whose target checkpoint is gone gets its target trained "
                        "again with the same options and seed; it is attacked only if it reaches exactly the "
                        "recorded natural accuracy (one-thread training on the same torch and CPU reproduces)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil benchmark`` sub-command."""
    p = Plan()
    b = sub.add_parser("benchmark", help="every defense under every attack: the privacy-utility table",
                       description="Run an experiment plan: train a target per defense and seed with the same "
                                   "budget, attack each with every attack, and write a Markdown/CSV table (mean ± std "
                                   "over seeds), a privacy-utility plot with the Pareto front and reconstruction "
                                   "grids; one MLflow parent run with a nested run per cell. Finished cells are "
                                   "skipped on a rerun; a rerun with more attacks attacks the saved targets instead "
                                   "of retraining.",)
    b.add_argument("--defenses", default=",".join(p.rows), help=f"comma list of rows: {', '.join(DEFENSE_CHOICES)} "
                   f"and the plan's [defenses.NAME] (default: {','.join(p.rows)})")
    b.add_argument("--attacks", default=",".join(p.attacks.names),
                   help=f"comma list of attacks (default: {','.join(p.attacks.names)})")
    b.add_argument("--seeds", default=",".join(map(str, p.seeds)),
                   help=f"target-training seeds (default: {','.join(map(str, p.seeds))})")
    b.add_argument("--policy", default=None, metavar="FILE",
                   help="exported policy for the policy defenses; a comma list gives one per seed, in --seeds order; "
                        "SEED=FILE pairs (0=a.safetensors,1=b.safetensors) name each seed's file")
    b.add_argument("--variant", action="append", default=None, metavar="NAME=DEFENSE [OPTIONS]",
                   help="deprecated: a named defense with its own veil train-fr options; name it in the plan file "
                        "instead ([defenses.NAME])")
    b.add_argument("--undefended-curve", default=None, metavar="E1,E2,...",
                   help="also train undefended targets for these fewer epochs (rows none-eE): the curve of what lower "
                        "accuracy alone buys, drawn on the plot; the table then compares each defense with an "
                        "undefended target of its own accuracy (e.g. 3,6,12)")
    add_plan_args(b)
    b.add_argument("--summarize-only", action="store_true", help="rebuild the tables, plot and grids from the "
                   "finished cells in the out dir without training or attacking anything")
    b.add_argument("--out-dir", default=p.out_dir, help=f"cells, tables, plots (default: {p.out_dir}; a plan's "
                                                        "out_dir is relative to the plan file)")
    add_data_args(b)
    add_device_args(b)
    add_cluster_args(b)
    add_tracking_args(b)
    b.set_defaults(handler=run)
