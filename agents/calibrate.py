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
game at that value. Cells are ``veil benchmark`` cells: an interrupted calibration resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.defenses.params import ACTION_TABLE, AugmentParams, decode, with_fixed

CALIBRATABLE = ("k", "alpha", "radius", "erase_p", "erase_area", "erase_aspect", "label_follow")
DEFAULT_VALUES = {"radius": "0.0125,0.025,0.05,0.1,0.2", "k": "1,2,3,4,5,6", "alpha": "0.2,0.5,1,2,5",
                  "erase_p": "0,0.25,0.5,0.75,1", "erase_area": "0.05,0.1,0.2,0.3,0.5",
                  "erase_aspect": "1,1.8,3.3", "label_follow": "0,0.5,1"}


def fr_options(params: AugmentParams, erase_fill: str = "mean") -> tuple[str, list[str]]:
    """The ``veil train-fr`` defense and options that apply ``params`` to every batch (the fixed
    augmentation a policy with this constant action would be): ``hybrid`` when it mixes and
    erases, ``mixup`` or ``re`` alone, ``none`` when it does neither."""
    mix = params.k > 1
    erase = params.erase_p > 0
    opts: list[str] = []
    if mix:
        opts += ["--mix-k", str(params.k), "--mix-alpha", f"{params.alpha:g}", "--mix-radius", f"{params.radius:g}",
                 "--mix-band", "high" if params.high_band else "low", "--mix-label-follow", f"{params.label_follow:g}"]
    if erase:
        lo, hi = params.erase_scale
        opts += ["--re-p", f"{params.erase_p:g}", "--re-area", f"{lo:g}", f"{hi:g}",
                 "--re-aspect", f"{params.erase_aspect:g}", "--re-fill", erase_fill]
    defense = "hybrid" if mix and erase else "mixup" if mix else "re" if erase else "none"
    return defense, opts


def centre_params(fixed: dict[str, float] | None, k_max: int = 6) -> AugmentParams:
    """The action an untrained agent takes (the centre of its box, action 0) with ``fixed`` applied."""
    return with_fixed(decode(np.zeros(len(ACTION_TABLE), dtype=np.float32), k_max), fixed)


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


def candidate_name(param: str, value: float) -> str:
    return f"cal-{param}-{value:g}"


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
    from .benchmark import mean_ci

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
    from matplotlib.ticker import NullFormatter

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
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--values {text!r}: write a comma list of numbers, e.g. 0.025,0.05,0.1") from None
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
    from veil.defenses.mixup import radial_frequency

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


def cmd_calibrate(args: argparse.Namespace) -> int:
    import mlflow

    from . import tracking
    from .benchmark import cmd_benchmark, read_cells
    from .train_agent import parse_fixed

    if args.param not in CALIBRATABLE:
        raise ValueError(f"--param {args.param!r}: choose from {', '.join(CALIBRATABLE)}")
    fixed = parse_fixed(args.fix if args.fix is not None else ["label_follow=0", "high_band=0"])
    if args.param in fixed:
        raise ValueError(f"--param {args.param} is also given as --fix {args.param}={fixed[args.param]:g}; "
                         "calibrate a parameter the agent would otherwise choose")
    if not math.isfinite(args.budget) or args.budget < 0:
        raise ValueError(f"--budget must be a number of points >= 0, got {args.budget}")
    values = parse_values(args.values or DEFAULT_VALUES[args.param], args.param)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if args.param == "radius" and fixed.get("high_band", 0) < 0.5:
        for a, b in same_band_radii(values, args.image_size):
            print(f"warning: radius {a:g} and {b:g} mix the same frequency bins at {args.image_size} px (bins sit "
                  f"{2 / args.image_size:.3g} of Nyquist apart): their cells will be the same augmentation")
    variants = []
    for v in values:
        defense, opts = fr_options(with_fixed(centre_params(fixed, args.k_max), {args.param: v}), args.erase_fill)
        variants.append(f"{candidate_name(args.param, v)}={defense} {shlex.join(opts)}".strip())
    args.defenses = ",".join(["none"] + [candidate_name(args.param, v) for v in values])
    args.variant, args.policy, args.undefended_curve, args.summarize_only = variants, None, None, False
    args.validation = True
    args.run_name = args.run_name or f"calibrate-{args.param}"
    print(f"calibrate {args.param} over {', '.join(f'{v:g}' for v in values)}: each a fixed augmentation (the "
          f"agent's untrained action{' with ' + ', '.join(f'{k}={v:g}' for k, v in fixed.items()) if fixed else ''}), "
          f"{args.epochs}-epoch targets, seeds {args.seeds}, scored on the validation split")
    cmd_benchmark(args)

    out = Path(args.out_dir)
    seeds = {int(s) for s in str(args.seeds).split(",") if s.strip()}
    names = {"none"} | {candidate_name(args.param, v) for v in values}
    records = read_cells(out, names, seeds)
    none = [r for r in records if r["defense"] == "none"]
    base = {a: float(np.mean([r["attacks"][a]["top1"] for r in none])) for a in attacks
            if none and all(a in r["attacks"] for r in none)}
    candidates = evaluate(records, args.param, values, attacks, args.budget)
    chosen = choose(candidates, attacks)
    md = markdown(candidates, base, args.param, args.budget, chosen, attacks)
    fix_line = " ".join(f"--fix {k}={v:g}" for k, v in {**fixed, **({args.param: chosen.value} if chosen else {})}.items())
    if chosen:
        md += f"\nPlay the game there: `veil train-agent ... {fix_line}`\n"
    (out / "calibration.md").write_text(md)
    (out / "calibration.json").write_text(json.dumps(
        {"param": args.param, "budget_points": args.budget, "fixed": fixed, "attacks": attacks,
         "none_top1": base, "candidates": [asdict(c) for c in candidates],
         "chosen": chosen.value if chosen else None, "train_agent_fix": fix_line}, indent=2))
    png = plot(candidates, base, args.param, args.budget, attacks, chosen, out / "calibration.png") \
        if candidates else None
    run = mlflow.last_active_run()
    if run is not None:
        with mlflow.start_run(run_id=run.info.run_id):
            tracking.log_params({"calibrate": {"param": args.param, "values": ",".join(f"{v:g}" for v in values),
                                               "budget_points": args.budget,
                                               "chosen": "none" if chosen is None else f"{chosen.value:g}"}})
            for c in candidates:
                tracking.log_metrics({f"calibrate.drop.{c.value:g}": c.drop,
                                      **{f"calibrate.{a}.{c.value:g}": t for a, t in c.attack_top1.items()}}, step=0)
            for p in [out / "calibration.md", out / "calibration.json", png]:
                if p is not None:
                    tracking.log_file(p, "calibrate")
    print("\n" + md)
    print(f"calibration: {out / 'calibration.md'}, {out / 'calibration.json'}"
          + (f", {png}" if png else ""))
    return 0 if chosen else 1


def add_parser(sub, add_data_args, add_tracking_args) -> None:
    from .benchmark import add_budget_args

    c = sub.add_parser("calibrate", help="price a parameter by deployed targets; the value the agent should play at",
                       description="For each value of one augmentation parameter, train targets under the agent's "
                                   "untrained action with that value (and --fix), next to undefended ones with the "
                                   "same seeds; score natural accuracy on a validation split carved from the private "
                                   "training images and run the probe attack(s); choose the value with the lowest "
                                   "attack top-1 whose mean accuracy drop is within --budget points. Prints the "
                                   "veil train-agent --fix that plays the game there. Resumable (benchmark cells).")
    c.add_argument("--param", default="radius", help=f"parameter to calibrate: {', '.join(CALIBRATABLE)} "
                                                      "(default: radius)")
    c.add_argument("--values", default=None, metavar="V1,V2,...",
                   help="values to try (default for radius: " + DEFAULT_VALUES["radius"] + ")")
    c.add_argument("--fix", action="append", default=None, metavar="NAME=VALUE",
                   help="parameters fixed as in the game you will play (default: label_follow=0 and high_band=0, "
                        "labels kept and the low band mixed)")
    c.add_argument("--budget", type=float, default=2.0, help="accuracy the deployed target may lose, in points "
                                                             "(mean paired drop vs none; default: 2)")
    c.add_argument("--attacks", default="pca", help="probe attack(s) scored per value (default: pca)")
    c.add_argument("--seeds", default="0,1,2", help="target seeds per value (default: 0,1,2)")
    c.add_argument("--k-max", type=int, default=6, help="the game's k_max (default: 6)")
    c.add_argument("--erase-fill", default="mean", help="the game's erase fill (default: mean)")
    add_budget_args(c)
    c.add_argument("--out-dir", default="benchmarks/results/calibrate", help="cells and the calibration report "
                                                                             "(default: benchmarks/results/calibrate)")
    add_data_args(c)
    add_tracking_args(c)
