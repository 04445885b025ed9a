"""``veil calibrate``: find an augmentation parameter's value by what it costs a *deployed* target.

The adversarial game prices utility on its own FR model (its held-out drop), and that price does
not carry to a target trained under the policy from scratch (docs/RESULTS.md, 0.11-0.12: 2-4
points in the game where a 90-epoch target loses none). This outer loop measures it instead, the
way AutoAugment scored its controller by child models: for each candidate value it trains short
deployments (the agent's untrained action, i.e. the centre of its box, with the configured fixes
and the candidate value) next to undefended ones with the same seeds, scores natural accuracy on a
validation split carved from the private *training* images (the test split stays unseen) and runs
the probe attack(s); then it picks the value with the lowest attack top-1 among those whose mean
paired accuracy drop is within the budget, and prints the ``veil train-agent --fix`` that plays the
game at that value. It runs a ``veil benchmark`` plan (``calibration_plan``), so its cells resume
like any benchmark's, and a plan file's ``[calibrate]`` table holds its settings.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from veil.defenses.mixup import radial_frequency
from veil.defenses.params import AugmentParams
from veil.env.actions import with_fixed

from . import tracking
from .benchmark import RunOptions, add_plan_args, given_plan, read_cells, run_benchmark, run_options
from .options import add_cluster_args, add_data_args, add_device_args, add_tracking_args
from .plan import AttackPlan, CalibratePlan, Plan, calibration_plan, candidate_name
from .tables import mean_ci
from .train_agent import parse_fixed

CALIBRATABLE = ("k", "alpha", "radius", "erase_p", "erase_area", "erase_aspect", "label_follow")
DEFAULT_VALUES = {"radius": "0.0125,0.025,0.05,0.1,0.2", "k": "1,2,3,4,5,6", "alpha": "0.2,0.5,1,2,5",
                  "erase_p": "0,0.25,0.5,0.75,1", "erase_area": "0.05,0.1,0.2,0.3,0.5",
                  "erase_aspect": "1,1.8,3.3", "label_follow": "0,0.5,1"}


@dataclass
class Candidate:
    """One calibrated value: its deployments' mean paired accuracy drop (points, 95% half-width)
    and the probe attacks' mean top-1 (fraction)."""

    value: float
    defense: str
    drop: float
    drop_ci: float
    attack_top1: dict[str, float]
    seeds: int
    within_budget: bool


def choose(candidates: list[Candidate], attacks: list[str]) -> Candidate | None:
    """The within-budget candidate with the lowest mean top-1 over ``attacks`` (ties: the smaller
    drop); None when no candidate keeps the budget."""
    ok = [c for c in candidates if c.within_budget and all(a in c.attack_top1 for a in attacks)]
    if not ok:
        return None
    return min(ok, key=lambda c: (float(np.mean([c.attack_top1[a] for a in attacks])), c.drop))


def evaluate(records: list[dict[str, Any]], param: str, values: list[float], attacks: list[str],
             budget: float) -> list[Candidate]:
    """Per value: paired natural-accuracy drop against ``none`` on the same seeds (points) and the
    mean attack top-1, from finished benchmark cells."""
    base = {r["seed"]: r["natural_top1"] for r in records if r["defense"] == "none"}
    out = []
    for v in values:
        name = candidate_name(param, v)
        cells = [r for r in records if r["defense"] == name and r["seed"] in base]
        if not cells:
            continue
        drops = [100.0 * (base[r["seed"]] - r["natural_top1"]) for r in cells]
        m, _, ci = mean_ci(drops) if len(drops) > 1 else (drops[0], 0.0, float("nan"))
        top1 = {a: float(np.mean([r["attacks"][a]["top1"] for r in cells])) for a in attacks
                if all(a in r["attacks"] and r["attacks"][a].get("top1") is not None for r in cells)}
        out.append(Candidate(v, name, m, ci, top1, len(cells), m <= budget))
    return out


def markdown(candidates: list[Candidate], base: dict[str, float], param: str, budget: float,
             chosen: Candidate | None, attacks: list[str]) -> str:
    head = f"| {param} | accuracy drop (points, paired vs none) | " + " | ".join(f"{a} top-1" for a in attacks) \
        + " | within budget |"
    rows = [head, "|" + "---|" * (3 + len(attacks))]
    rows.append("| none | - | " + " | ".join(f"{100 * base[a]:.1f}%" if a in base else "-" for a in attacks) + " | |")
    for c in candidates:
        ci = "" if math.isnan(c.drop_ci) else f" ± {c.drop_ci:.1f}"
        mark = "**" if chosen is not None and c.value == chosen.value else ""
        rows.append(f"| {mark}{c.value:g}{mark} | {c.drop:+.1f}{ci} | "
                    + " | ".join(f"{100 * c.attack_top1[a]:.1f}%" if a in c.attack_top1 else "-" for a in attacks)
                    + f" | {'yes' if c.within_budget else 'no'} |")
    verdict = (f"Chosen: {param} = {chosen.value:g} (the lowest attack top-1 within {budget:g} points)."
               if chosen else f"No value kept the accuracy within {budget:g} points: nothing chosen.")
    note = ("Natural accuracy on a validation split carved from the private training images (the test split "
            "unseen); drops are paired by seed against `none`, mean ± the 95% t half-width over seeds; attack "
            "top-1 is the mean over seeds.")
    return "\n".join(rows) + "\n\n" + note + "\n\n" + verdict + "\n"


def plot(candidates: list[Candidate], base: dict[str, float], param: str, budget: float, attacks: list[str],
         chosen: Candidate | None, path: Path) -> Path:
    """Accuracy drop and attack top-1 against the value: where the budget line cuts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    xs = [c.value for c in candidates]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.errorbar(xs, [c.drop for c in candidates], yerr=[0 if math.isnan(c.drop_ci) else c.drop_ci
                                                         for c in candidates], marker="o", capsize=3)
    ax1.axhline(budget, color="red", ls="--", lw=1, label=f"budget {budget:g} points")
    ax1.set_xlabel(param), ax1.set_ylabel("accuracy drop vs none (points)"), ax1.legend(fontsize=8)
    for a in attacks:
        ys = [100 * c.attack_top1.get(a, float("nan")) for c in candidates]
        line, = ax2.plot(xs, ys, marker="o", label=a)
        if a in base:
            ax2.axhline(100 * base[a], color=line.get_color(), ls=":", lw=1)
    if chosen is not None:
        for ax in (ax1, ax2):
            ax.axvline(chosen.value, color="green", lw=1, alpha=0.6)
    ax2.set_xlabel(param), ax2.set_ylabel("attack top-1 (%); dotted: none"), ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        if min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs], fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"veil calibrate: {param} priced by deployed targets (validation split)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_values(text: str, param: str) -> list[float]:
    """``--values 0.05,0.1`` as checked, sorted values."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--values {text!r}: write a comma list of numbers, e.g. 0.025,0.05,0.1") from None
    return check_values(values, param)


def check_values(values: list[float], param: str) -> list[float]:
    """Values to calibrate: at least one, finite, each in the parameter's range; sorted, unique."""
    if not values:
        raise ValueError("--values: give at least one value")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"--values: {bad[0]} is not a finite number")
    for v in values:  # AugmentParams names a value outside the parameter's range
        with_fixed(AugmentParams(), {param: v})
    return sorted(set(values))


def same_band_radii(values: list[float], size: int) -> list[tuple[float, float]]:
    """Pairs of low-band radii that mix exactly the same rfft2 bins at ``size`` px (bins sit
    1/(size/2) of Nyquist apart, so at 64 px r < 0.0125 and r < 0.025 both hold the DC term alone)."""
    grid = radial_frequency(size, size)
    seen: dict[int, float] = {}
    pairs = []
    for v in sorted(values):
        n = int((grid < v).sum())
        if n in seen:
            pairs.append((seen[n], v))
        else:
            seen[n] = v
    return pairs


def check_calibration(c: CalibratePlan, image_size: int) -> CalibratePlan:
    """The calibration's parameter, fixes, budget and values checked; the default values filled in."""
    if c.param not in CALIBRATABLE:
        raise ValueError(f"--param {c.param!r}: choose from {', '.join(CALIBRATABLE)}")
    if c.param in c.fix:
        raise ValueError(f"--param {c.param} is also given as --fix {c.param}={c.fix[c.param]:g}; "
                         "calibrate a parameter the agent would otherwise choose")
    if not math.isfinite(c.budget) or c.budget < 0:
        raise ValueError(f"--budget must be a number of points >= 0, got {c.budget}")
    with_fixed(AugmentParams(), c.fix)
    values = check_values(c.values or parse_values(DEFAULT_VALUES[c.param], c.param), c.param)
    if c.param == "radius" and c.fix.get("high_band", 0) < 0.5:
        for a, b in same_band_radii(values, image_size):
            print(f"warning: radius {a:g} and {b:g} mix the same frequency bins at {image_size} px (bins sit "
                  f"{2 / image_size:.3g} of Nyquist apart): their cells will be the same augmentation")
    return replace(c, values=values)


def calibrate(plan: Plan, opts: RunOptions) -> Candidate | None:
    """Run (or summarize) the calibration ``plan`` and write its report; returns the chosen value."""
    c = check_calibration(plan.calibrate or CalibratePlan(), plan.data.image_size)
    bench = calibration_plan(replace(plan, calibrate=c))
    opts = replace(opts, tracking=replace(opts.tracking, run_name=opts.tracking.run_name or f"calibrate-{c.param}"))
    attacks = bench.attacks.names
    print(f"calibrate {c.param} over {', '.join(f'{v:g}' for v in c.values)}: each a fixed augmentation (the "
          f"agent's untrained action{' with ' + ', '.join(f'{k}={v:g}' for k, v in c.fix.items()) if c.fix else ''}), "
          f"{bench.budget.epochs}-epoch targets, seeds {','.join(map(str, bench.seeds))}, scored on the validation split")
    run_benchmark(bench, opts)

    out = Path(bench.out_dir)
    records = read_cells(out, set(bench.rows), set(bench.seeds))
    none = [r for r in records if r["defense"] == "none"]
    base = {a: float(np.mean([r["attacks"][a]["top1"] for r in none])) for a in attacks
            if none and all(a in r["attacks"] for r in none)}
    candidates = evaluate(records, c.param, c.values, attacks, c.budget)
    chosen = choose(candidates, attacks)
    md = markdown(candidates, base, c.param, c.budget, chosen, attacks)
    fix_line = " ".join(f"--fix {k}={v:g}" for k, v in {**c.fix, **({c.param: chosen.value} if chosen else {})}.items())
    if chosen:
        md += f"\nPlay the game there: `veil train-agent ... {fix_line}`\n"
    (out / "calibration.md").write_text(md)
    (out / "calibration.json").write_text(json.dumps(
        {"param": c.param, "budget_points": c.budget, "fixed": c.fix, "attacks": attacks,
         "none_top1": base, "candidates": [asdict(x) for x in candidates],
         "chosen": chosen.value if chosen else None, "train_agent_fix": fix_line}, indent=2))
    png = plot(candidates, base, c.param, c.budget, attacks, chosen, out / "calibration.png") if candidates else None
    run = None if opts.summarize_only else mlflow.last_active_run()
    if run is not None:
        with tracking.start_run(run_id=run.info.run_id):
            tracking.log_params({"calibrate": {"param": c.param, "values": ",".join(f"{v:g}" for v in c.values),
                                               "budget_points": c.budget,
                                               "chosen": "none" if chosen is None else f"{chosen.value:g}"}})
            for x in candidates:
                tracking.log_metrics({f"calibrate.drop.{x.value:g}": x.drop,
                                      **{f"calibrate.{a}.{x.value:g}": t for a, t in x.attack_top1.items()}}, step=0)
            for p in [out / "calibration.md", out / "calibration.json", png]:
                if p is not None:
                    tracking.log_file(p, "calibrate")
    print("\n" + md)
    print(f"calibration: {out / 'calibration.md'}, {out / 'calibration.json'}" + (f", {png}" if png else ""))
    return chosen


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The calibration plan: ``--config`` (or the defaults: the probe attack pca, its own out dir),
    with the flags given over it."""
    plan, given = given_plan(args, add_parser, Plan(attacks=AttackPlan(names=["pca"]),
                                                    out_dir="benchmarks/results/calibrate"))
    c = plan.calibrate or CalibratePlan()
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("param", "budget", "k_max", "erase_fill") if k in given}
    if "fix" in given:
        changes["fix"] = parse_fixed(args.fix)
    if "values" in given:
        changes["values"] = parse_values(args.values, changes.get("param", c.param))
    return replace(plan, calibrate=replace(c, **changes))


def run(args: argparse.Namespace) -> int:
    """CLI entry of ``veil calibrate``: exit 1 when no value keeps the budget."""
    return 0 if calibrate(plan_from_args(args), run_options(args)) else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil calibrate`` sub-command (defaults from ``CalibratePlan``)."""
    d = CalibratePlan()
    c = sub.add_parser("calibrate", help="price a parameter by deployed targets; the value the agent should play at",
                       description="For each value of one augmentation parameter, train targets under the agent's "
                                   "untrained action with that value (and --fix), next to undefended ones with the "
                                   "same seeds; score natural accuracy on a validation split carved from the private "
                                   "training images and run the probe attack(s); choose the value with the lowest "
                                   "attack top-1 whose mean accuracy drop is within --budget points. Prints the "
                                   "veil train-agent --fix that plays the game there. Resumable (benchmark cells).",
                      )
    c.add_argument("--param", default=d.param, help=f"parameter to calibrate: {', '.join(CALIBRATABLE)} "
                                                    f"(default: {d.param})")
    c.add_argument("--values", default=None, metavar="V1,V2,...",
                   help="values to try (default for radius: " + DEFAULT_VALUES["radius"] + ")")
    c.add_argument("--fix", action="append", default=None, metavar="NAME=VALUE",
                   help="parameters fixed as in the game you will play (default: label_follow=0 and high_band=0, "
                        "labels kept and the low band mixed)")
    c.add_argument("--budget", type=float, default=d.budget, help="accuracy the deployed target may lose, in points "
                                                                  f"(mean paired drop vs none; default: {d.budget:g})")
    c.add_argument("--attacks", default="pca", help="probe attack(s) scored per value (default: pca)")
    c.add_argument("--seeds", default="0,1,2", help="target seeds per value (default: 0,1,2)")
    c.add_argument("--k-max", type=int, default=d.k_max, help=f"the game's k_max (default: {d.k_max})")
    c.add_argument("--erase-fill", default=d.erase_fill, help=f"the game's erase fill (default: {d.erase_fill})")
    add_plan_args(c)
    c.add_argument("--summarize-only", action="store_true",
                   help="rebuild the calibration and the tables from the finished cells without running anything")
    c.add_argument("--out-dir", default="benchmarks/results/calibrate", help="cells and the calibration report "
                                                                             "(default: benchmarks/results/calibrate)")
    add_data_args(c)
    add_device_args(c)
    add_cluster_args(c)
    add_tracking_args(c)
    c.set_defaults(handler=run)
