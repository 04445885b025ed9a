"""The privacy-utility tables of a benchmark, built from its cells: per row and attack the mean,
spread and 95% interval over target seeds, paired differences against ``none`` (and against an
undefended target of equal accuracy), the target verdict, the Markdown and CSV tables, the
privacy-utility plot with its Pareto front and the reconstruction grids. Pure functions of the
cell records: ``veil benchmark --summarize-only`` rebuilds everything from them."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision.utils import make_grid

from .plan import CURVE_NAME, is_undefended

METRICS = ("top1", "top5", "knn_dist", "nn_feature_acc", "nn_pixel_acc", "psnr", "ssim", "sink_share", "frechet")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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


def summarize(records: list[dict[str, Any]], defenses: list[str], attacks: list[str]) -> list[dict[str, Any]]:
    """One row per (defense, attack): mean, std and 95% interval over target seeds of natural
    accuracy and every metric, and whether the attack top-1 differs from ``none`` beyond the
    spread (the 95% interval of the difference of means excludes 0)."""
    rows = []
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
            rows.append(row)
    for r in rows:
        r["vs_curve"] = "" if is_undefended(r["defense"]) else _vs_curve(records, r["defense"], r["attack"])
    base = {r["attack"]: r for r in rows if r["defense"] == "none"}
    for r in rows:
        b = base.get(r["attack"])
        if b is None or r["defense"] == "none":
            r["vs_none"], r["natural_vs_none"], r["relative_drop"], r["vs_none_paired"] = "", math.nan, math.nan, ""
            continue
        r["paired"] = paired(records, r["defense"], "none", metric_points(r["attack"]))
        r["vs_none_paired"] = _vs_none_text(*r["paired"])
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


def _vs_none_text(m: float, half: float, n: int) -> str:
    """A paired difference from ``none`` as the summary's text: ``-12.1 ± 1.7 *`` (``*``: the
    interval excludes 0). Cells of one seed share the attacked identities, the batch order and the
    attack's draws, so pairing by seed removes what the unpaired (Welch) interval counts as noise."""
    if n < 2:
        return f"{m:+.1f} (one pair: no interval)" if n else ""
    return f"{m:+.1f} ± {half:.1f}{' *' if abs(m) > half else ''}"


def paired(records: list[dict[str, Any]], a: str, b: str, key: Any) -> tuple[float, float, int]:
    """Mean and 95% half-width of ``key(cell of a) - key(cell of b)`` over the seeds both have."""
    ca = {r["seed"]: r for r in records if r["defense"] == a}
    cb = {r["seed"]: r for r in records if r["defense"] == b}
    diffs = [key(ca[s]) - key(cb[s]) for s in sorted(set(ca) & set(cb))]
    diffs = [d for d in diffs if d is not None and math.isfinite(d)]
    m, _, ci = mean_ci(diffs)
    return m, ci, len(diffs)


def fmt_paired(m: float, ci: float, n: int) -> str:
    """``paired``'s figures as table text: ``-12.1 ± 1.7 \\*`` (``\\*``: the interval excludes 0)."""
    if n == 0 or math.isnan(m):
        return "-"
    star = " \\*" if n > 1 and not math.isnan(ci) and (m + ci < 0 or m - ci > 0) else ""
    return f"{m:+.1f}" + ("" if math.isnan(ci) else f" ± {ci:.1f}") + star


def metric_points(attack: str, metric: str = "top1") -> Any:
    """A cell's ``metric`` under ``attack`` in points (nan where that attack did not run)."""
    def get(cell: dict[str, Any]) -> float:
        v = cell["attacks"].get(attack, {}).get(metric)
        return math.nan if v is None else 100.0 * float(v)
    return get


def natural_points(cell: dict[str, Any]) -> float:
    """A cell's natural top-1 in points."""
    return 100.0 * cell["natural_top1"]


def pareto_verdict(d_natural: tuple[float, float, int], d_attack: tuple[float, float, int]) -> str:
    """Whether the reference row is Pareto-ahead of another, from ``paired`` differences *other
    minus reference* in natural and attack top-1: ``ahead`` (no less accurate and less exposed on
    the means), ``ahead beyond the spread`` (and the attack's interval excludes 0 while the accuracy's
    does not say the reference is worse), ``behind`` (the other row is), else ``a trade``."""
    (dn, hn, n), (da, ha, _) = d_natural, d_attack
    if n == 0 or math.isnan(dn) or math.isnan(da):
        return "-"
    if dn <= 0 and da >= 0 and (dn < 0 or da > 0):
        beyond = n > 1 and da - ha > 0 and not dn - hn > 0
        return "ahead beyond the spread" if beyond else "ahead"
    if dn >= 0 and da <= 0 and (dn > 0 or da < 0):
        return "behind"
    return "a trade" if (dn, da) != (0.0, 0.0) else "equal"


def against(records: list[dict[str, Any]], reference: str, defenses: list[str], attacks: list[str]) -> str:
    """``results.md``'s section pairing every row with ``reference`` by seed: natural and each
    attack's top-1 (other minus reference, points, 95% t interval) and, per attack, whether the
    reference is Pareto-ahead of that row (``pareto_verdict``)."""
    head = ["defense", "seeds", "Δ natural", *[f"Δ {a} top-1" for a in attacks],
            *[f"`{reference}` vs it, {a}" for a in attacks]]
    lines = [f"## Paired against `{reference}`", "",
             f"Each row minus `{reference}` on the seeds both ran (points, mean ± 95% t half-width, \\* the interval "
             f"excludes 0). *ahead*: `{reference}` is no less accurate and less exposed on the means; *beyond the "
             "spread*: and the attack's interval excludes 0 while accuracy's does not favour the row.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in defenses:
        if d == reference or not any(r["defense"] == d for r in records):
            continue
        dn = paired(records, d, reference, natural_points)
        da = [paired(records, d, reference, metric_points(a)) for a in attacks]
        lines.append("| " + " | ".join([d, str(dn[2]), fmt_paired(*dn), *[fmt_paired(*x) for x in da],
                                        *[pareto_verdict(dn, x) for x in da]]) + " |")
    return "\n".join(lines) + "\n"


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


def write_outputs(records: list[dict[str, Any]], defenses: list[str], attacks: list[str], out: Path,
                  compare_to: str = "") -> str:
    """``results.md``, ``results.csv``, ``privacy_utility.png`` and ``grid-<attack>.png`` from the
    cells' records, with every row paired against ``compare_to`` where that row ran; returns the
    Markdown."""
    rows = summarize(records, defenses, attacks)
    md = "## Summary\n\n" + headline(rows, attacks)
    if compare_to and any(r["defense"] == compare_to for r in records):
        md += "\n" + against(records, compare_to, defenses, attacks)
    md += "\n## Every metric\n\n" + markdown(rows)
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
