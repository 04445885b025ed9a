"""``veil benchmark``: every defense under every attack, same data, budget and seeds.

What runs is a plan (``plan.py``: a TOML file given with ``--config``, flags over it). Each cell
(row x target seed) trains a target with ``veil train-fr``'s code, measures its natural accuracy,
runs every attack through the harness and writes ``cells/<row>-s<seed>.json`` atomically after
training and after each attack, so an interrupted benchmark resumes where it stopped and a rerun
with more attacks attacks the saved targets instead of retraining them. The summary (Markdown,
CSV, a privacy-utility plot with the Pareto front, reconstruction grids) is rebuilt from the
cells. In MLflow: one parent run, one nested training run per cell, one nested attack run under it.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file
from torchvision.utils import make_grid

from veil.attacks.evaluation import EvalModelConfig, train_eval_model
from veil.attacks.harness import ATTACKS, HarnessConfig, run_attack, target_accuracy
from veil.recognition import TrainerConfig, load_faces, split_identities

from . import tracking
from .attack_cli import attack_settings, load_target
from .options import (
    add_data_args,
    add_tracking_args,
    command_parser,
    defense_options,
    given_options,
    row_namespace,
    row_options_from_argv,
)
from .plan import CURVE_NAME, DEFENSE_CHOICES, Plan, Row, calibration_plan, is_undefended, load_plan
from .train_fr import FRJob, PolicyUse, Tracking, train_fr

METRICS = ("top1", "top5", "knn_dist", "nn_feature_acc", "nn_pixel_acc", "psnr", "ssim", "sink_share", "frechet")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass
class RunOptions:
    """How a plan is run (not what it measures): where it is logged, rebuild-only, retraining."""

    tracking: Tracking
    summarize_only: bool = False
    retrain_lost: bool = False


def _write_json(obj: Any, path: Path) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the 95% t-interval (nan for one value)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return m, sd, T95.get(len(v) - 1, 1.96) * sd / math.sqrt(len(v))


def cell_job(plan: Plan, name: str, seed: int, track: Tracking) -> FRJob:
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
    ns = row_namespace({**options, "defense": ",".join(names) or "none"})
    train = TrainerConfig(epochs=epochs, batch_size=plan.budget.batch_size, lr=plan.budget.lr, seed=seed)
    return FRJob(data=plan.data, split=plan.split, train=train, model=plan.budget.model,
                 defense=defense_options(ns, seed), policy=policy, threads=plan.budget.threads,
                 checkpoint=str(Path(plan.out_dir) / "checkpoints" / f"{name}-s{seed}.pt"),
                 tracking=replace(track, run_name=f"{name}-s{seed}"))


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
        _write_json(record, cell)
    finally:
        os.close(folder)  # closing the descriptor releases the lock
    return record


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
              "train_args": isinstance(record.get("train_args", []), list)}
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


def _train_target(plan: Plan, track: Tracking, defense: str, seed: int, split, ckpt: Path):
    """Train one cell's target with its options and seed (``train_fr`` writes ``ckpt``); return the
    FR run, the loaded model and its natural accuracy on the test split."""
    fr_run = train_fr(cell_job(plan, defense, seed, track))
    target, _, _ = load_target(str(ckpt))
    return fr_run, target, target_accuracy(target, split)


def retrain_lost_target(plan: Plan, track: Tracking, defense: str, seed: int, split, record: dict[str, Any],
                        ckpt: Path):
    """Train a cell's lost target again with the cell's options and seed and return it, if it
    reaches exactly the recorded natural accuracy (top-1 and top-5 on the same test images); else
    set the new checkpoint aside and stop, since attacks on another model would be mixed into the
    cell. One-thread training on the same torch and CPU reproduces; other setups may not."""
    print(f"target {ckpt} is gone: training it again (seed {seed}) and checking it against the cell")
    fr_run, target, natural = _train_target(plan, track, defense, seed, split, ckpt)
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
        fr_run, target, natural = _train_target(plan, opts.tracking, defense, seed, split, ckpt)
        record = {"defense": defense, "seed": seed, "fr_run": fr_run, "natural_top1": natural["top1"],
                  "natural_top5": natural["top5"], "collapsed": bool(natural["collapsed"]), "attacks": {},
                  "split": split.kind, "options": plan.row(defense).options,
                  "seconds": time.perf_counter() - t0}
        _write_json(record, cell)
        if record["collapsed"]:
            print(f"warning: target {defense} seed {seed} collapsed (its output does not depend on the input); its "
                  "attack scores are those of a model that learned nothing. The table counts it and says so.")
    elif ckpt.is_file() and _set_aside_if_partial(ckpt) is None:
        target, _, _ = load_target(str(ckpt))
        _check_reproduces(target_accuracy(target, split), split, record, f"the target {ckpt} of cell {defense} seed {seed}",
                          "Delete the cell (or the checkpoint) to train it again.")
    elif opts.retrain_lost:
        target = retrain_lost_target(plan, opts.tracking, defense, seed, split, record, ckpt)
        _write_json(record, cell)
    else:
        raise FileNotFoundError(f"cell {cell} lacks attacks but its target {ckpt} is gone; pass --retrain-lost to "
                                "train it again with the same options and seed (kept only if it reaches the "
                                "recorded accuracy), or delete the cell file to start the cell over")
    missing = [a for a in plan.attacks.names if a not in record["attacks"]]
    settings = attack_settings(plan.attacks)
    record["fr_run"] = _run_in_this_store(record["fr_run"], f"{defense}-s{seed}")
    with tracking.start_run(run_id=record["fr_run"], nested=True):
        for attack in missing:
            t1 = time.perf_counter()
            report = run_attack(attack, target, split, ev.model,
                                HarnessConfig(identities=plan.attacks.identities, attack_seeds=plan.attacks.attack_seeds,
                                              settings=settings, seed=seed))
            report.context.update({"target": str(ckpt), "defense": defense, "seed": seed,
                                   "target_top1": record["natural_top1"]})
            with tracking.start_run(run_name=f"attack-{attack}", nested=True) as child:
                mlflow.set_tags({"veil.kind": "attack", "veil.attack": attack, "veil.defense": defense})
                tracking.log_metrics({f"attack.{k}": float(v) for k, v in report.summary.items()
                                      if isinstance(v, float) and math.isfinite(v)}, step=0)
                paths = report.save(out / "reports" / f"{defense}-s{seed}-{attack}")
                for p in paths.values():
                    tracking.log_file(p, "report")
            record["attacks"][attack] = {**{k: report.summary.get(k) for k in METRICS},
                                         "seconds": sum(report.seconds), "report": str(paths["markdown"]),
                                         "grid": str(paths["grid"]), "attack_run": child.info.run_id,
                                         "evaluator": ev.fingerprint, **report.extra.get("budget", {})}
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - t1
            _save_cell(record, cell)
    return record


def summarize(records: list[dict[str, Any]], defenses: list[str], attacks: list[str]) -> list[dict[str, Any]]:
    """One row per (defense, attack): mean, std and 95% interval over target seeds of natural
    accuracy and every metric, and whether the attack top-1 differs from ``none`` beyond the
    spread (the 95% interval of the difference of means excludes 0)."""
    rows = []
    top1_by_seed: dict[tuple[str, str], dict[int, float | None]] = {}
    for d in defenses:
        cells = [r for r in records if r["defense"] == d]
        if not cells:
            continue
        for a in attacks:
            done = [c for c in cells if a in c["attacks"]]  # the seeds this attack has run on
            if not done:
                continue
            row: dict[str, Any] = {"defense": d, "attack": a, "seeds": len(done),
                                   "collapsed": sum(bool(c.get("collapsed")) for c in done)}
            row["natural_top1"] = mean_ci([c["natural_top1"] for c in done])
            for k in METRICS:
                row[k] = mean_ci([c["attacks"][a].get(k) for c in done])
            row["seconds"] = mean_ci([c["attacks"][a].get("seconds") for c in done])[0]
            steps = [(c["attacks"][a].get("gan_steps_done"), c["attacks"][a].get("gan_time_capped")) for c in done]
            row["gan_steps"] = steps if any(n is not None for n, _ in steps) else []
            top1_by_seed[d, a] = {c["seed"]: c["attacks"][a].get("top1") for c in done}
            rows.append(row)
    for r in rows:
        r["vs_curve"] = "" if is_undefended(r["defense"]) else _vs_curve(records, r["defense"], r["attack"])
    base = {r["attack"]: r for r in rows if r["defense"] == "none"}
    for r in rows:
        b = base.get(r["attack"])
        if b is None or r["defense"] == "none":
            r["vs_none"], r["natural_vs_none"], r["relative_drop"], r["vs_none_paired"] = "", math.nan, math.nan, ""
            continue
        r["paired"] = _paired_stats(top1_by_seed[r["defense"], r["attack"]], top1_by_seed["none", r["attack"]])
        r["vs_none_paired"] = _paired(top1_by_seed[r["defense"], r["attack"]], top1_by_seed["none", r["attack"]])
        # the target reads these two: attack top-1 down by half or more, natural top-1 within 2 points
        r["natural_vs_none"] = r["natural_top1"][0] - b["natural_top1"][0]
        r["relative_drop"] = (b["top1"][0] - r["top1"][0]) / b["top1"][0] if b["top1"][0] > 0 else math.nan
        # what a sink class cannot fake: the pixel-space neighbour's drop, and the sink shares themselves
        r["pixel_drop"] = (b["nn_pixel_acc"][0] - r["nn_pixel_acc"][0]) / b["nn_pixel_acc"][0] \
            if b["nn_pixel_acc"][0] > 0 else math.nan
        r["sink_pair"] = (r["sink_share"][0], b["sink_share"][0])
        (m1, s1, _), (m2, s2, _) = r["top1"], b["top1"]
        n1, n2 = r["seeds"], b["seeds"]
        if n1 < 2 or n2 < 2 or math.isnan(s1) or math.isnan(s2):
            r["vs_none"] = f"{100 * (m1 - m2):+.1f} (one seed: no interval)"
            continue
        se = math.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2)
        half = T95.get(min(n1, n2) - 1, 1.96) * se
        sig = abs(m1 - m2) > half
        r["vs_none"] = f"{100 * (m1 - m2):+.1f} ± {100 * half:.1f}{' *' if sig else ''}"
    return rows


def _paired_stats(top1: dict[int, float | None], base: dict[int, float | None]) -> tuple[float, float, int]:
    """Mean and 95% t half-width (in points) of the per-seed attack top-1 differences from
    ``none`` over the seeds both ran, and how many seeds that is. Cells of one seed share the
    attacked identities, the batch order and the attack's random draws, so a seed that is easy to
    attack is easy under every defense; pairing removes that shared part, which the unpaired
    (Welch) interval counts as noise."""
    d = [100 * (top1[k] - base[k]) for k in sorted(top1) if k in base and top1[k] is not None and base[k] is not None]
    m, _, half = mean_ci(d)
    return m, half, len(d)


def _paired(top1: dict[int, float | None], base: dict[int, float | None]) -> str:
    """``_paired_stats`` as table text: ``-12.1 ± 1.7 *`` (``*``: the interval excludes 0)."""
    m, half, n = _paired_stats(top1, base)
    if n < 2:
        return f"{m:+.1f} (one pair: no interval)" if n else ""
    return f"{m:+.1f} ± {half:.1f}{' *' if abs(m) > half else ''}"


TARGET_DROP, TARGET_COST, TARGET_SEEDS = 0.5, 2.0, 3


def target_verdict(row: dict[str, Any]) -> tuple[bool, str]:
    """The issue's target for one (defense, attack) row: attack top-1 down by at least 50%
    relative to ``none`` with the paired 95% interval of the difference below 0, at a cost of at
    most 2 points of natural top-1, over at least 3 seeds. Returns (met, the first reason it is
    not, or the figures that meet it)."""
    if is_undefended(row["defense"]):
        return False, "baseline"
    m, half, n = row.get("paired", (math.nan, math.nan, 0))
    if math.isnan(row.get("relative_drop", math.nan)):
        return False, "`none` not run"
    drop, cost = 100 * row["relative_drop"], 0.0 - 100 * row["natural_vs_none"]  # 0.0 - : no "-0.0"
    if n < TARGET_SEEDS:
        return False, f"{n} paired seed{'s' if n != 1 else ''} (needs {TARGET_SEEDS})"
    if drop < 0:
        return False, f"attack up {-drop:.0f}%"
    if drop < 100 * TARGET_DROP:
        return False, f"drop {drop:.0f}%"
    if not m + half < 0:
        return False, f"drop {drop:.0f}%, interval reaches 0"
    if cost > TARGET_COST:
        return False, f"drop {drop:.0f}% at {cost:.1f} points"
    pix, (sink, sink0) = row.get("pixel_drop", math.nan), row.get("sink_pair", (math.nan, math.nan))
    check = "" if math.isnan(pix) else f" (pixel-space neighbour {100 * pix:.0f}% down, sink share " \
        f"{100 * sink:.0f}% against {100 * sink0:.0f}%)"
    return True, f"drop {drop:.0f}% at {max(cost, 0.0):.1f} points{check}"


def _vs_curve(records: list[dict[str, Any]], defense: str, attack: str) -> str:
    """The attack top-1 of ``defense`` minus that of an undefended target *of the same natural
    accuracy*, read off the seed's undefended curve (``none`` and the ``none-e<E>`` rows, linearly
    interpolated in natural accuracy), with the 95% t interval over seeds. A seed whose target lies
    outside its curve's accuracy range is left out rather than extrapolated. Empty without a curve."""

    diffs = []
    for c in records:
        if c["defense"] != defense or attack not in c["attacks"] or c["attacks"][attack].get("top1") is None:
            continue
        curve = sorted((r["natural_top1"], r["attacks"][attack]["top1"]) for r in records
                       if r["seed"] == c["seed"] and is_undefended(r["defense"])
                       and r["attacks"].get(attack, {}).get("top1") is not None)
        if len(curve) < 2 or not curve[0][0] <= c["natural_top1"] <= curve[-1][0]:
            continue
        nat, atk = zip(*curve)
        diffs.append(100 * (c["attacks"][attack]["top1"] - float(np.interp(c["natural_top1"], nat, atk))))
    if len(diffs) < 2:
        return f"{diffs[0]:+.1f} (one seed: no interval)" if diffs else ""
    m, _, half = mean_ci(diffs)
    return f"{m:+.1f} ± {half:.1f}{' *' if abs(m) > half else ''} ({len(diffs)} seeds)"


def _pm(stat: tuple[float, float, float], pct: bool) -> str:
    m, s, _ = stat
    if math.isnan(m):
        return "-"
    f = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    return f"{f * m:.1f}{unit}" if math.isnan(s) else f"{f * m:.1f} ± {f * s:.1f}{unit}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The benchmark table: mean ± std over target seeds."""
    curve = any(r.get("vs_curve") for r in rows)  # the column only where an undefended curve was run
    head = ["defense", "attack", "seeds", "natural top-1", "Δ natural", "attack top-1", "Δ top-1 vs none (95% CI)",
            "paired by seed", *(["vs undefended at equal accuracy"] if curve else []), "relative drop", "top-5",
            "NN feature id", "NN pixel id", "KNN dist", "PSNR", "SSIM", "sink share", "Fréchet", "attack s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["defense"], r["attack"],
            str(r["seeds"]) + (f" ({r['collapsed']} collapsed)" if r.get("collapsed") else ""),
            _pm(r["natural_top1"], True),
            "-" if math.isnan(r["natural_vs_none"]) else f"{100 * r['natural_vs_none']:+.1f}", _pm(r["top1"], True),
            r["vs_none"] or "-", r.get("vs_none_paired") or "-", *([r.get("vs_curve") or "-"] if curve else []),
            "-" if math.isnan(r["relative_drop"]) else f"{100 * r['relative_drop']:.0f}%",
            _pm(r["top5"], True), _pm(r["nn_feature_acc"], True), _pm(r["nn_pixel_acc"], True),
            _pm(r["knn_dist"], False), _pm(r["psnr"], False),
            "-" if math.isnan(r["ssim"][0]) else f"{r['ssim'][0]:.3f}", _pm(r["sink_share"], True),
            _pm(r["frechet"], False), f"{r['seconds']:.0f}"]) + " |")
    lines += ["", "`*`: the 95% interval of the difference from `none` excludes 0 (Welch, t with min(n)-1 "
              "degrees of freedom). With 3 seeds only large differences pass. Paired by seed: the mean of the per-seed "
              "differences from `none` with its 95% t interval (cells of one seed share the attacked identities, batch "
              "order and attack draws, so pairing removes what a seed does to every defense alike). Δ natural: natural top-1 minus "
              "`none`'s, in points; relative drop: 1 - attack top-1 / `none`'s attack top-1. \"collapsed\": targets whose "
              "output does not depend on the input (they never learned); they are counted in the means, not dropped."]
    if curve:
        lines += ["", "`none-e<E>`: the undefended target trained for E epochs instead of the full budget. Vs undefended at "
                      "equal accuracy: the attack top-1 minus that of an undefended target of the same natural accuracy, "
                      "interpolated on each seed's curve of `none` and the `none-e<E>` rows, mean over seeds with its 95% "
                      "t interval; seeds whose target lies outside their curve's accuracy range are left out. Below 0, "
                      "the defense buys privacy that training less would not; at or above 0, it only buys what its "
                      "accuracy loss buys."]
    gan = [f"{r['defense']}/{r['attack']} " + ", ".join("?" if n is None else f"{n}{' (time cap)' if cap else ''}"
                                                      for n, cap in r["gan_steps"])
           for r in rows if r.get("gan_steps")]
    if gan:
        lines += ["", "GAN generator steps per target seed (compare rows only at like budgets; a time-capped GAN "
                      "trains fewer steps on a busier machine; ? = not recorded): " + "; ".join(gan) + "."]
    return "\n".join(lines) + "\n"


def headline(rows: list[dict[str, Any]], attacks: list[str]) -> str:
    """The table to read first: one row per defense, natural top-1 and each attack's top-1 (mean ±
    std over seeds) with its paired difference from ``none``, the Pareto front of each attack
    marked, and the issue's target judged per defense and attack (``target_verdict``)."""
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    by = {(r["defense"], r["attack"]): r for r in rows}
    fronts = {a: {r["defense"] for r in rows if r["attack"] == a and not CURVE_NAME.match(r["defense"])
                  and not math.isnan(r["top1"][0]) and not dominated_by(rows, r["defense"], a)} for a in attacks}
    head = ["defense", "natural top-1", "Δ natural", *[f"{a} top-1 (paired Δ vs none)" for a in attacks], "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met_by = []
    for d in defenses:
        d_rows = [by[d, a] for a in attacks if (d, a) in by]
        widest = max(d_rows, key=lambda r: r["seeds"])  # natural accuracy over the most seeds any attack ran on
        cells, verdicts = [], []
        for a in attacks:
            r = by.get((d, a))
            if r is None:
                cells.append("not run")
                continue
            n = f" (n={r['seeds']})" if r["seeds"] != widest["seeds"] else ""
            m, half, k = r.get("paired", (math.nan, math.nan, 0))
            paired = "" if not k else f" ({m:+.1f}, one seed)" if k < 2 else \
                f" ({m:+.1f} ± {half:.1f}{' *' if abs(m) > half else ''})"
            cells.append(f"{_pm(r['top1'], True)}{paired}{n}{' ◆' if d in fronts[a] else ''}")
            met, why = target_verdict(r)
            if why != "baseline":
                verdicts.append(f"{a}: {'**met**, ' if met else ''}{why}")
            if met:
                met_by.append(f"{d} ({a})")
        nat = "-" if math.isnan(widest["natural_vs_none"]) else f"{100 * widest['natural_vs_none']:+.1f}"
        lines.append("| " + " | ".join([d, _pm(widest["natural_top1"], True), nat, *cells,
                                         "; ".join(verdicts) or "-"]) + " |")
    lines += ["", "Attack top-1 by the evaluation model, mean ± std over target seeds; in brackets the mean of the "
                  "per-seed differences from `none` in points with its 95% t interval (`*`: the interval excludes 0); "
                  "(n=…): seeds this attack ran on, where fewer than the row's; ◆: on that attack's privacy-utility "
                  "Pareto front (higher natural, lower attack top-1; the `none-e<E>` curve rows left out). "
                  f"Target: attack top-1 down by at least {100 * TARGET_DROP:.0f}% of `none`'s with the paired interval "
                  f"below 0, at a cost of at most {TARGET_COST:.0f} points of natural top-1, over at least "
                  f"{TARGET_SEEDS} seeds. Top-1 alone can be faked by a sink class of the evaluation model, so a "
                  "met target also shows how far the pixel-space nearest neighbour's identity fell and the sink share "
                  "against `none`'s.",
              "", f"**Target met by:** {', '.join(met_by) if met_by else 'no defense here'}."]
    for d in [d for d in defenses if d.startswith("policy")]:  # the target's first half: the policy on the front
        where = []
        for a in attacks:
            if (d, a) not in by:
                continue
            beat = dominated_by(rows, d, a)
            where.append(f"{a}: " + (f"dominated by {', '.join(beat)}" if beat else "on the front"))
        lines += ["", f"**`{d}` on the Pareto front:** " + "; ".join(where) + "."]
    return "\n".join(lines) + "\n"


def dominated_by(rows: list[dict[str, Any]], defense: str, attack: str) -> list[str]:
    """The defenses (``none-e<E>`` curve rows left out) whose mean point beats ``defense``'s under
    ``attack``: natural top-1 at least as high and attack top-1 at least as low, one of them strictly."""
    pts = {r["defense"]: (r["natural_top1"][0], r["top1"][0]) for r in rows
           if r["attack"] == attack and not CURVE_NAME.match(r["defense"]) and not math.isnan(r["top1"][0])}
    if defense not in pts:
        return []
    u, p = pts[defense]
    return [d for d, (u2, p2) in pts.items() if u2 >= u and p2 <= p and (u2 > u or p2 < p)]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = ["natural_top1", *METRICS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["defense", "attack", "seeds", *[f"{c}_{s}" for c in cols for s in ("mean", "std", "ci95")],
                    "seconds", "vs_none", "vs_none_paired", "vs_curve", "natural_vs_none", "relative_drop", "collapsed",
                    "target_met", "target_note"])
        for r in rows:
            met, note = target_verdict(r)
            w.writerow([r["defense"], r["attack"], r["seeds"], *[v for c in cols for v in r[c]], r["seconds"],
                        r["vs_none"], r.get("vs_none_paired", ""), r.get("vs_curve", ""), r["natural_vs_none"], r["relative_drop"],
                        r.get("collapsed", 0), int(met), note])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (higher natural accuracy, lower attack accuracy), sorted
    by natural accuracy."""
    front = [i for i, (u, p) in enumerate(points)
             if not any((u2 >= u and p2 <= p) and (u2 > u or p2 < p) for u2, p2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def plot(rows: list[dict[str, Any]], attacks: list[str], path: Path) -> Path:
    """Attack top-1 against natural top-1, one point per defense, std error bars, Pareto front;
    ``none`` and the ``none-e<E>`` rows, if any, drawn as the undefended curve (not on the front)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attacks), figsize=(5.2 * len(attacks), 4.4), squeeze=False)
    # one colour and marker per defense, the same in every panel (ten colours, then a new marker)
    names = list(dict.fromkeys(r["defense"] for r in rows if not CURVE_NAME.match(r["defense"])))
    style = {d: dict(color=f"C{i % 10}", marker="osD^v"[i // 10 % 5]) for i, d in enumerate(names)}
    for ax, a in zip(axes[0], attacks):
        a_rows = [r for r in rows if r["attack"] == a and not math.isnan(r["top1"][0])]
        undefended = sorted((100 * r["natural_top1"][0], 100 * r["top1"][0]) for r in a_rows
                            if is_undefended(r["defense"]))
        if len(undefended) > 1:
            ax.plot(*zip(*undefended), ":", color="0.5", marker=".", lw=1.2, label="undefended, fewer epochs")
        rs = [r for r in a_rows if not CURVE_NAME.match(r["defense"])]
        pts = [(100 * r["natural_top1"][0], 100 * r["top1"][0]) for r in rs]
        for r, (u, p) in zip(rs, pts):
            xe = 0 if math.isnan(r["natural_top1"][1]) else 100 * r["natural_top1"][1]
            ye = 0 if math.isnan(r["top1"][1]) else 100 * r["top1"][1]
            ax.errorbar(u, p, xerr=xe, yerr=ye, linestyle="none", capsize=3, **style[r["defense"]])
            ax.annotate(r["defense"], (u, p), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(pts)
        if len(front) > 1:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, label="Pareto front")
        if len(front) > 1 or len(undefended) > 1:
            ax.legend(fontsize=8)
        ax.set_xlabel("natural top-1 (%)  →  better")
        ax.set_ylabel("attack top-1 (%)  ↓  better")
        ax.set_title(f"attack: {a}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def defense_grid(records: list[dict[str, Any]], defenses: list[str], attack: str, path: Path,
                 identities: int = 10) -> Path | None:
    """One row per defense (its first seed that saved reconstructions): the first reconstruction
    of each of the first ``identities`` attacked identities; the top row holds the nearest private
    training image of each. Returns None when no cell saved reconstructions for ``attack``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, torch.Tensor]] = []
    reference: torch.Tensor | None = None
    classes: list[int] | None = None
    for d in defenses:
        cells = sorted((r for r in records if r["defense"] == d and attack in r["attacks"]), key=lambda r: r["seed"])
        for r in cells:
            f = Path(r["attacks"][attack]["report"]).with_name("reconstructions.safetensors")
            if not f.is_file():
                continue
            t = load_file(str(f))
            if classes is None:
                classes = list(dict.fromkeys(t["labels"].tolist()))[:identities]
            first = [int((t["labels"] == c).nonzero()[0]) if (t["labels"] == c).any() else -1 for c in classes]
            if min(first) < 0:
                continue
            if reference is None:
                reference = t["nearest"][first]
            a = r["attacks"][attack]
            rows.append((f"{d} (s{r['seed']})\nnat {100 * r['natural_top1']:.0f}%, atk {100 * a['top1']:.0f}%",
                         t["images"][first]))
            break
    if not rows or reference is None:
        return None
    rows.insert(0, ("private (nearest)", reference))
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * len(classes) + 1.8, 1.15 * len(rows)), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], rows):
        strip = make_grid(imgs.float() / 255.0, nrow=len(imgs), padding=2, pad_value=1.0)
        ax.imshow(strip.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if strip.shape[0] == 1 else None)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{attack}: first reconstruction of identities {classes}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(records: list[dict[str, Any]], defenses: list[str], attacks: list[str], out: Path) -> str:
    """``results.md``, ``results.csv``, ``privacy_utility.png`` and ``grid-<attack>.png`` from the
    cells' records; returns the Markdown table."""
    rows = summarize(records, defenses, attacks)
    md = "## Summary\n\n" + headline(rows, attacks) + "\n## Every metric\n\n" + markdown(rows)
    if any(r.get("split") == "validation" for r in records):
        md = ("> Natural accuracy in these tables is measured on a **validation split** carved from the private "
              "training images (`--validation`), not on the test split.\n\n" + md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md)
    write_csv(rows, out / "results.csv")
    plot(rows, attacks, out / "privacy_utility.png")
    for a in attacks:
        defense_grid(records, defenses, a, out / f"grid-{a}.png")
    return md


def run_benchmark(plan: Plan, opts: RunOptions) -> list[dict[str, Any]]:
    """Run (or, with ``summarize_only``, only summarize) every cell of ``plan``; returns the records."""
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
        md = write_outputs(records, defenses, attacks, out)
        print(md)
        print(f"results (from {len(records)} cells; nothing run): {out / 'results.md'}")
        return records
    for d in [d for d in defenses if "policy" in plan.row(d).use]:
        for s in seeds:
            path = Path(plan.policy_for_seed(s, d))
            if not path.is_file():
                raise FileNotFoundError(f"policy: no file {path}")
    split = split_identities(load_faces(plan.data), plan.split)
    ev = train_eval_model(split, EvalModelConfig(epochs=plan.attacks.eval_epochs))
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
                             "split": split.summary()})
        evaluator = ev.fingerprint

        def state(d: str, s: int, quiet: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
            """The cell's saved record (None: not trained) and the attacks it still lacks."""
            cell = out / "cells" / f"{d}-s{s}.json"
            done = _read_cell(cell, out / "checkpoints" / f"{d}-s{s}.pt", split)
            check_row_cell(done, plan.row(d), cell)  # built-ins: no options, always {}
            for a in [a for a in attacks if done is not None and a in done["attacks"]]:
                scored_by = done["attacks"][a].get("evaluator")  # None: a cell from before this record
                if scored_by is not None and scored_by != evaluator:
                    if not quiet:
                        print(f"cell {d} seed {s}: {a} was scored by another evaluation model ({scored_by}, now "
                              f"{evaluator}); rerunning it so every row is judged by the same model")
                    del done["attacks"][a]
            return done, [a for a in attacks if done is None or a not in done["attacks"]]

        todo = []
        for d in defenses:
            for s in seeds:
                done, missing = state(d, s)
                if not missing:
                    print(f"cell {d} seed {s}: done before, skipped")
                    records.append(done)
                else:
                    todo.append((d, s))
        t0 = time.perf_counter()
        for i, (d, s) in enumerate(todo):
            done, missing = state(d, s, quiet=True)  # read again: another benchmark on this out-dir may have run it
            if not missing:
                print(f"\ncell {d} seed {s}: finished by another process meanwhile, skipped")
                records.append(done)
                continue
            print(f"\n== cell {d} seed {s} [{i + 1}/{len(todo)}{eta(i, len(todo), time.perf_counter() - t0)}]"
                  + ("" if done is None else f": target trained before; attacks {', '.join(missing)}"))
            records.append(run_cell(plan, opts, d, s, split, ev, done))
        md = write_outputs(records, defenses, attacks, out)
        for f in ["results.md", "results.csv", "privacy_utility.png", *(f"grid-{a}.png" for a in attacks)]:
            if (out / f).is_file():
                tracking.log_file(out / f, "benchmark")
    print("\n" + md)
    print(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'privacy_utility.png'}; veil ui to compare")
    return records


def plan_from_args(args: argparse.Namespace, add: Any) -> Plan:
    """The plan a command runs: its ``--config`` file (or the defaults), with the flags given over it;
    a calibration plan runs as its rows (``none`` and one per value, on the validation split)."""
    plan = load_plan(args.config) if args.config else Plan()
    given = given_options(command_parser(add), args.argv) if hasattr(args, "argv") else set(vars(args))
    return calibration_plan(plan.with_flags(args, given - {"config"}))


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(Tracking(args.tracking_uri, args.experiment, args.run_name),
                      summarize_only=getattr(args, "summarize_only", False), retrain_lost=args.retrain_lost)


def run(args: argparse.Namespace) -> int:
    """CLI entry of ``veil benchmark``."""
    run_benchmark(plan_from_args(args, add_parser), run_options(args))
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
    add_tracking_args(b)
    b.set_defaults(handler=run)
