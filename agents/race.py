"""``veil race``: does a learner beat the best fixed augmentation that the same compute can find?

A race is a plan (``[race]``, ``RacePlan``) run in two stages, like a held-out model selection:

1. **validation**: every contestant's candidates train targets on the validation split (carved
   from the private training images) for ``validation_seeds`` and are scored by the probe attack;
   C1's candidates are a finished ``veil calibrate`` folder's cells;
2. **test**: each contestant's pick, by one rule fixed before any run (the lowest mean validation
   top-1 of ``select_attack`` whose mean paired accuracy drop against ``none`` is at most
   ``budget`` points), trains on fresh ``test_seeds`` and faces every attack of the plan; GMI
   never takes part in selection, so it checks the pick is not tuned to the probe.

Contestants: C1 the calibration's best constant; C2 random search over the box (as many
settings as C1's grid has values, the same seeds: the same compute); C3 two-phase schedules
(strong mixing first or last, switching at 1/3 or 2/3); C4 a stochastic constant (a setting drawn
from the box per batch, TrivialAugment's control: no search); and the plan's ``learners`` (T0 the
game's agent, T1 the new learners), rows of the plan. Compute is counted in FR training runs of
the plan's budget. ``race.md`` holds the paired differences against C1 on the test seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.defenses.schedule import ParamBox, Phase, Schedule, two_phase

from .benchmark import RunOptions, add_plan_args, given_plan, judges_found, read_cells, run_benchmark, run_options
from .options import add_cluster_args, add_data_args, add_device_args, add_tracking_args
from .plan import AttackPlan, Plan, RacePlan, Row, calibration_plan, centre_params, fr_options, load_plan
from .schedules import save_schedule, schedule_toml
from .tables import fmt_paired, mean_ci, metric_points, natural_points, paired

CONTESTANTS = ("c1", "c2", "c3", "c4")
LABELS = {"c1": "C1 best constant (grid)", "c2": "C2 random search", "c3": "C3 two-phase schedules",
          "c4": "C4 stochastic constant", "t0": "T0 the per-batch game's agent", "t1-ppo": "T1 PPO over whole runs",
          "t1-pbt": "T1 PBT over whole runs"}


def race_box(r: RacePlan) -> ParamBox:
    """The race's box with its fixed parameters as degenerate ranges."""
    fixed = {k: [float(v), float(v)] for k, v in r.fix.items()}
    return ParamBox({**{k: tuple(v) for k, v in r.box.items()}, **{k: tuple(v) for k, v in fixed.items()}})


def _write_if_changed(schedule: Schedule, path: Path, note: str) -> str:
    if not path.is_file() or path.read_text() != schedule_toml(schedule, note):
        save_schedule(schedule, path, note)
    return str(path)


def contestant_rows(plan: Plan) -> dict[str, dict[str, Row]]:
    """The candidates each searching contestant trains on the validation seeds (C1's come from its
    calibration folder), and the learners' rows; schedule files go to ``<out>/schedules``."""
    r = _race(plan)
    box = race_box(r)
    out = Path(plan.out_dir) / "schedules"
    gen = torch.Generator().manual_seed(r.random_seed)
    c2 = {f"c2-r{i}": fr_options(box.sample(gen)) for i in range(r.random_points)}
    centre = centre_params(r.fix)
    strong, relaxed = replace(centre, radius=r.strong_radius), replace(centre, radius=r.relaxed_radius)
    c3 = {}
    for strong_first in (True, False) if "c3" in r.baselines else ():
        for switch in r.switches:
            name = f"c3-{'strong' if strong_first else 'relaxed'}-first-{round(100 * switch)}"
            note = (f"{'strong' if strong_first else 'relaxed'} (radius {r.strong_radius if strong_first else r.relaxed_radius:g}) "
                    f"until {switch:.3g} of the run, then {'relaxed' if strong_first else 'strong'}")
            path = _write_if_changed(two_phase(strong, relaxed, switch, strong_first), out / f"{name}.toml", note)
            c3[name] = Row("schedule", schedule=path)
    c4 = {}
    if "c4" in r.baselines:
        c4["c4-uniform"] = Row("schedule", schedule=_write_if_changed(
            Schedule((Phase(1.0, box=box),)), out / "c4-uniform.toml", "a setting drawn from the race's box for every batch"))
    rows = {k: v for k, v in {"c2": c2, "c3": c3, "c4": c4}.items() if k in r.baselines}
    for learner, names in r.learners.items():
        rows[learner] = {n: plan.row(n) for n in names}
    return rows


def _race(plan: Plan) -> RacePlan:
    if plan.race is None:
        raise ValueError("this plan has no [race] table; see docs/reference.md (veil race)")
    return plan.race


def validation_plan(plan: Plan, only: list[str] | None = None) -> Plan:
    """The benchmark of the validation stage: ``none`` and every candidate but C1's, on the
    validation split, probe attack only."""
    r = _race(plan)
    rows = {n: row for cands in contestant_rows(plan).values() for n, row in cands.items()}
    names = ["none", *rows]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"--only {unknown[0]!r}: not a row of this race's validation stage ({', '.join(names)})")
        names = [n for n in names if n in only]
    return replace(plan, rows=names, seeds=list(r.validation_seeds), defenses={**plan.defenses, **rows},
                   split=replace(plan.split, validation=True), undefended_curve=[], race=None,
                   attacks=replace(plan.attacks, names=[r.select_attack]),
                   out_dir=str(Path(plan.out_dir) / "validation"))


def c1_plan(plan: Plan) -> Plan:
    """C1's calibration plan (its folder's ``plan.toml``), as the benchmark of its candidates."""
    r = _race(plan)
    if not r.calibration:
        raise ValueError("race: name C1's finished veil calibrate folder (calibration = \"../<folder>\")")
    return calibration_plan(load_plan(Path(r.calibration) / "plan.toml"))


@dataclass
class Candidate:
    """One candidate's validation figures: mean paired accuracy drop (points) with its 95%
    half-width, mean probe top-1, seeds, and whether it keeps the budget."""

    name: str
    drop: float
    drop_ci: float
    top1: float
    seeds: int
    within_budget: bool


def candidates(records: list[dict[str, Any]], names: list[str], attack: str, budget: float,
               seeds: list[int]) -> list[Candidate]:
    """Each named candidate with all ``seeds`` finished (and ``none`` on them), from validation cells."""
    base = {r["seed"]: r for r in records if r["defense"] == "none"}
    out = []
    for name in names:
        cells = {r["seed"]: r for r in records if r["defense"] == name}
        if not all(s in cells and s in base and attack in cells[s]["attacks"] for s in seeds):
            continue
        drops = [100.0 * (base[s]["natural_top1"] - cells[s]["natural_top1"]) for s in seeds]
        m, _, ci = mean_ci(drops)
        top1 = float(np.mean([cells[s]["attacks"][attack]["top1"] for s in seeds]))
        out.append(Candidate(name, m, ci, top1, len(seeds), m <= budget + 1e-9))
    return out


def select(cands: list[Candidate]) -> Candidate | None:
    """The rule: the lowest mean probe top-1 among candidates within the budget (ties: the smaller drop)."""
    ok = [c for c in cands if c.within_budget]
    return min(ok, key=lambda c: (c.top1, c.drop)) if ok else None


def selection(plan: Plan) -> dict[str, dict[str, Any]]:
    """Every contestant's validation candidates and pick, with its compute in FR training runs."""
    r = _race(plan)
    calib = c1_plan(plan)
    c1_names = [n for n in calib.rows if n != "none"]
    c1_records = read_cells(Path(calib.out_dir), set(calib.rows), set(r.validation_seeds))
    val = validation_plan(plan)
    records = read_cells(Path(val.out_dir), set(val.rows), set(r.validation_seeds))
    groups = {"c1": (c1_names, c1_records), **{c: (list(rows), records) for c, rows in contestant_rows(plan).items()}}
    out = {}
    for c, (names, recs) in groups.items():
        cands = candidates(recs, names, r.select_attack, r.budget, r.validation_seeds)
        pick = select(cands) if len(cands) == len(names) else None
        learning = sum(learning_runs(plan.row(n)) for n in names) if c in r.learners else 0.0
        out[c] = {"candidates": cands, "pick": pick, "complete": len(cands) == len(names),
                  "fr_runs": len(names) * len(r.validation_seeds) + learning, "rows": names}
    return out


def learning_runs(row: Row) -> float:
    """The FR runs a learner spent finding a schedule row's file (its JSON record), 0 otherwise."""
    record = Path(row.schedule).with_suffix(".json") if row.schedule else None
    if record is None or not record.is_file():
        return 0.0
    return float(json.loads(record.read_text()).get("fr_runs", 0.0))


def seed_judges(records: list[dict[str, Any]], attacks: list[str]) -> dict[int, str]:
    """The evaluation model that scored each seed's cells; a seed scored by two is an error, since
    its rows' paired differences would mix judges."""
    found = judges_found(records, attacks)
    mixed = {s: j for s, j in found.items() if len(j) > 1}
    if mixed:
        s, j = min(mixed.items())
        raise ValueError(f"seed {s}'s cells were scored by {len(j)} evaluation models "
                         f"({', '.join(sorted(map(str, j)))}); "
                         "rerun its stage (judge_scope seed redoes an unfinished seed under one)")
    return {s: next(iter(j)) for s, j in found.items() if j}


def test_plan(plan: Plan, picks: dict[str, Candidate | None]) -> Plan:
    """The benchmark of the test stage: ``none`` and each contestant's pick on the fresh test seeds."""
    r = _race(plan)
    calib = c1_plan(plan)
    rows = {n: row for cands in contestant_rows(plan).values() for n, row in cands.items()}
    rows.update(calib.defenses)
    chosen = [p.name for p in picks.values() if p is not None]
    extra = [n for n in r.test_extra if n not in chosen and n != "none"]
    unknown = [n for n in extra if n not in rows]
    if unknown:
        raise ValueError(f"race: test_extra {unknown[0]!r} is not a row of this race ({', '.join(rows)})")
    return replace(plan, rows=["none", *chosen, *extra], seeds=list(r.test_seeds),
                   defenses={**plan.defenses, **{n: rows[n] for n in chosen + extra}}, undefended_curve=[], race=None,
                   out_dir=str(Path(plan.out_dir) / "test"))


def report(plan: Plan, sel: dict[str, dict[str, Any]], test_records: list[dict[str, Any]],
           validation_records: list[dict[str, Any]] | None = None) -> str:
    """``race.md``: the validation picks, then the test seeds' paired differences against C1."""
    r = _race(plan)
    lines = [f"# Race: {plan.data.source}, {plan.split.n_private} private identities, {plan.budget.epochs} epochs", "",
             f"Selection rule (fixed before any run): the lowest mean validation {r.select_attack} top-1 whose mean "
             f"paired accuracy drop against `none` is at most {r.budget:g} points; validation seeds "
             f"{','.join(map(str, r.validation_seeds))}, test seeds {','.join(map(str, r.test_seeds))}.", "",
             "## Validation: each contestant's candidates and pick", "",
             f"| contestant | compute (FR runs: search, learning and validation) | candidates | pick | its drop (points) "
             f"| its {r.select_attack} top-1 |",
             "|---|---|---|---|---|---|"]
    for c, s in sel.items():
        p = s["pick"]
        label = LABELS.get(c, c)
        status = "" if s["complete"] else f" ({len(s['candidates'])} of {len(s['rows'])} finished)"
        if p is None:
            lines.append(f"| {label} | {s['fr_runs']:g} | {len(s['rows'])}{status} | "
                         f"{'none within the budget' if s['complete'] else 'not yet'} | - | - |")
        else:
            ci = "" if math.isnan(p.drop_ci) else f" ± {p.drop_ci:.1f}"
            lines.append(f"| {label} | {s['fr_runs']:g} | {len(s['rows'])} | `{p.name}` | {p.drop:+.1f}{ci} | "
                         f"{100 * p.top1:.1f}% |")
    lines += ["", "Every candidate (drop: mean paired accuracy drop vs none, points; top-1: mean over the "
              "validation seeds):", ""]
    for c, s in sel.items():
        lines.append(f"- {LABELS.get(c, c)}: " + "; ".join(
            f"`{x.name}` {x.drop:+.1f} / {100 * x.top1:.1f}%{'' if x.within_budget else ' (over budget)'}"
            for x in s["candidates"]))
    picks = {c: s["pick"].name for c, s in sel.items() if s["pick"] is not None}
    lines += [""] + agreement_markdown(proxy_agreement(validation_records or [], [r.select_attack]),
                                       "on the validation targets")
    stability = identity_stability(validation_records or [], r.select_attack)
    if stability:
        lines += [f"Is an identity's exposure a property of the identity? Mean Spearman's rho, over pairs of "
                  f"validation seeds, of the per-identity {r.select_attack} top-1 (per-identity strength is worth "
                  "building only at rho >= 0.5): " + "; ".join(
                      f"`{row}` {rho:+.2f} ({n} pairs)" for row, (rho, n) in sorted(stability.items())) + ".", ""]
    lines += ["## Test: paired differences on the fresh seeds", ""]
    if "c1" not in picks or not test_records:
        lines.append("Not run yet: `veil race --config <plan> --stage test` runs each pick once its contestant has one.")
        return "\n".join(lines) + "\n"
    attacks = plan.attacks.names
    seeds = sorted({x["seed"] for x in test_records})
    lines.append(f"Seeds {','.join(map(str, seeds))}. Each entry: mean of the per-seed differences ± the 95% t "
                 "half-width, in points (`*`: the interval excludes 0). Natural accuracy on the test split.")
    judges = seed_judges(test_records, attacks)
    if len(set(judges.values())) > 1:  # a plan run over machines (judge_scope seed): pairs stay within a seed
        lines.append("Judged a seed at a time (judge_scope seed; each seed's rows by one evaluation model): " + "; ".join(
            f"{s} `{j}`" for s, j in sorted(judges.items())) + ".")
    lines.append("")
    head = "| contestant (pick) | natural top-1 | Δ natural vs none | " + " | ".join(
        f"{a} top-1 | Δ {a} vs C1" for a in attacks) + " |"
    lines += [head, "|" + "---|" * (3 + 2 * len(attacks))]
    owner = {n: c for c, s in sel.items() for n in s["rows"]}
    extra = [(f"{LABELS.get(owner.get(n, ''), owner.get(n, n))}, outside the rule", n)
             for n in r.test_extra if n not in picks.values() and n != "none"]
    for c, name in [("none", "none"), *picks.items(), *extra]:
        cells = [x for x in test_records if x["defense"] == name]
        if not cells:
            continue
        nat = 100 * float(np.mean([x["natural_top1"] for x in cells]))
        dn = fmt_paired(*paired(test_records, name, "none", natural_points)) if name != "none" else "-"
        row = f"| {LABELS.get(c, c)} (`{name}`) | {nat:.1f}% ({len(cells)}) | {dn} |"
        for a in attacks:
            vals = [metric_points(a, "top1")(x) for x in cells]
            top = f"{np.nanmean(vals):.1f}%" if any(math.isfinite(v) for v in vals) else "-"
            vs = fmt_paired(*paired(test_records, name, picks["c1"], metric_points(a, "top1"))) if c != "c1" else "-"
            row += f" {top} | {vs} |"
        lines.append(row)
    lines += ["", "Against C1, the pixel-space nearest neighbour's identity accuracy (`nn_pixel_acc`, needs no "
              "evaluation model) and the sink share (reconstructions on the most-hit class):", "",
              "| contestant | " + " | ".join(f"Δ {a} nn_pixel | Δ {a} sink" for a in attacks) + " |",
              "|" + "---|" * (1 + 2 * len(attacks))]
    for c, name in [*picks.items(), *extra]:
        if c == "c1":
            continue
        row = f"| {LABELS.get(c, c)} |"
        for a in attacks:
            row += (f" {fmt_paired(*paired(test_records, name, picks['c1'], metric_points(a, 'nn_pixel_acc')))} |"
                    f" {fmt_paired(*paired(test_records, name, picks['c1'], metric_points(a, 'sink_share')))} |")
        lines.append(row)
    lines += [""] + agreement_markdown(proxy_agreement(test_records, attacks), "on the test targets")
    return "\n".join(lines) + "\n"


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return math.nan

    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def proxy_agreement(records: list[dict[str, Any]], attacks: list[str]) -> dict[str, dict[str, tuple[float, int]]]:
    """For each cheap proxy a cell records, its Spearman correlation with each attack's top-1 over
    the cells that have both (targets of every row and seed), with the number of targets."""
    names = sorted({k for r in records for k in r.get("proxies", {})})
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for name in names:
        out[name] = {}
        for a in attacks:
            pairs = [(r["proxies"][name], r["attacks"][a]["top1"]) for r in records
                     if name in r.get("proxies", {}) and r["attacks"].get(a, {}).get("top1") is not None]
            out[name][a] = (spearman([p for p, _ in pairs], [t for _, t in pairs]), len(pairs))
    return out


def identity_stability(records: list[dict[str, Any]], attack: str) -> dict[str, tuple[float, int]]:
    """Per row: the mean Spearman correlation, over pairs of seeds, of which identities the attack
    reconstructs (per-identity top-1, ``identity_top1`` in the cells), with the number of pairs:
    whether an identity's exposure is a property of the identity (per-identity strength can
    target it) or of the seed (it cannot)."""
    out: dict[str, tuple[float, int]] = {}
    rows: dict[str, list[dict[str, float]]] = {}
    for r in records:
        per = r["attacks"].get(attack, {}).get("identity_top1")
        if isinstance(per, dict) and per:
            rows.setdefault(r["defense"], []).append(per)
    for row, seeds in rows.items():
        rhos = []
        for i in range(len(seeds)):
            for j in range(i + 1, len(seeds)):
                ids = sorted(set(seeds[i]) & set(seeds[j]))
                rho = spearman([seeds[i][k] for k in ids], [seeds[j][k] for k in ids])
                if not math.isnan(rho):
                    rhos.append(rho)
        if rhos:
            out[row] = (float(np.mean(rhos)), len(rhos))
    return out


def agreement_markdown(agreement: dict[str, dict[str, tuple[float, int]]], where: str) -> list[str]:
    if not agreement:
        return []
    attacks = list(next(iter(agreement.values())))
    lines = [f"Cheap proxies against the full attacks, {where}: Spearman's rho over targets (n); a proxy may "
             "stand in for an attack as a reward only at rho >= 0.8.", "",
             "| proxy | " + " | ".join(f"{a} top-1" for a in attacks) + " |", "|" + "---|" * (1 + len(attacks))]
    for name, row in agreement.items():
        lines.append(f"| `{name}` | " + " | ".join(
            "-" if math.isnan(rho) else f"{rho:+.2f} ({n})" for rho, n in row.values()) + " |")
    return lines + [""]


def race(plan: Plan, opts: RunOptions, stage: str = "all", only: list[str] | None = None) -> dict[str, Any]:
    """Run (or summarize) the race ``plan``: the validation stage, the selection, the test stage;
    write ``race.md`` and ``race.json`` to the plan's out dir and return the selection."""
    r = _race(plan)
    out = Path(plan.out_dir)
    if stage in ("all", "validation") and not opts.summarize_only:
        run_benchmark(validation_plan(plan, only), replace(opts, block_rows=tuple(validation_plan(plan).rows)))
    sel = selection(plan)
    picks = {c: s["pick"] for c, s in sel.items() if s["complete"]}  # a contestant still searching joins later
    test_records: list[dict[str, Any]] = []
    if picks.get("c1") is not None:
        tp = test_plan(plan, picks)
        if stage in ("all", "test") and not opts.summarize_only:
            run_benchmark(replace(tp, rows=[n for n in tp.rows if not only or n in only]),
                          replace(opts, block_rows=tuple(tp.rows)))
        test_records = read_cells(Path(tp.out_dir), set(tp.rows), set(r.test_seeds))
    elif stage == "test" and not opts.summarize_only:
        raise ValueError("the test stage compares with C1's pick: C1's calibration has no pick within the budget "
                         "(or its cells are missing)")
    val = validation_plan(plan)
    md = report(plan, sel, test_records, read_cells(Path(val.out_dir), set(val.rows), set(r.validation_seeds)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "race.md").write_text(md)
    (out / "race.json").write_text(json.dumps(
        {c: {"pick": asdict(s["pick"]) if s["pick"] else None, "fr_runs": s["fr_runs"], "complete": s["complete"],
             "candidates": [asdict(x) for x in s["candidates"]]} for c, s in sel.items()}, indent=1))
    print("\n" + md)
    print(f"race: {out / 'race.md'}, {out / 'race.json'}")
    return sel


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan, _ = given_plan(args, add_parser, Plan(attacks=AttackPlan(names=["pca", "gmi"]), race=RacePlan(),
                                                out_dir="benchmarks/results/race"))
    return plan


def run(args: argparse.Namespace) -> int:
    """CLI entry of ``veil race``."""
    only = [w.strip() for w in (args.only or "").split(",") if w.strip()] or None
    race(plan_from_args(args), run_options(args), args.stage, only)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``veil race`` sub-command."""
    c = sub.add_parser("race", help="learned augmentation against the best fixed one at equal compute",
                       description="Run a race plan ([race] in a plan file): every contestant searches on validation "
                                   "seeds, each one's pick (one rule, fixed before any run) trains on fresh test seeds "
                                   "under every attack; race.md holds the paired differences against the best constant "
                                   "(C1). Resumable (benchmark cells).")
    c.add_argument("--stage", choices=("all", "validation", "test"), default="all",
                   help="run only the validation stage or only the test stage (default: all; the test stage needs "
                        "every validation cell)")
    c.add_argument("--only", default=None, metavar="ROW,...",
                   help="run only these rows (e.g. to split a stage between two processes)")
    c.add_argument("--attacks", default="pca,gmi", help="attacks at the test stage (default: pca,gmi)")
    c.add_argument("--seeds", default="0,1,2", help=argparse.SUPPRESS)
    add_plan_args(c)
    c.add_argument("--summarize-only", action="store_true",
                   help="rebuild race.md from the finished cells without running anything")
    c.add_argument("--out-dir", default="benchmarks/results/race", help="cells and race.md (default: "
                                                                       "benchmarks/results/race)")
    add_data_args(c)
    add_device_args(c)
    add_cluster_args(c)
    add_tracking_args(c)
    c.set_defaults(handler=run)
