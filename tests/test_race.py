"""``veil race``: contestants search on validation seeds, one fixed rule picks, fresh seeds test."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from veil.agents import race
from veil.agents.benchmark import read_cells
from veil.agents.cli import main
from veil.agents.plan import load_plan
from veil.agents.schedules import load_schedule
from veil.agents.tables import fmt_paired, metric_points, paired

TINY_PLAN = """
out_dir = "."
[data]
source = "synthetic"
synthetic_identities = 8
synthetic_images = 8
image_size = 32
[budget]
epochs = 1
batch_size = 16
threads = 1
[attacks]
names = ["pca"]
steps = 10
restarts = 1
attack_seeds = 1
eval_epochs = 1
"""

RACE = """
[race]
calibration = "../cal"
validation_seeds = [0]
test_seeds = [5]
budget = 100.0
random_points = 1
switches = [0.5]
"""


def write_race(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "race").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "race" / "plan.toml"
    path.write_text(TINY_PLAN + RACE + extra)
    return path


def cell(defense: str, seed: int, natural: float, pca: float) -> dict:
    return {"defense": defense, "seed": seed, "natural_top1": natural, "attacks": {"pca": {"top1": pca}}}


def test_the_rule_picks_the_lowest_probe_top1_within_the_accuracy_budget() -> None:
    records = [cell("none", s, 0.9, 0.5) for s in (0, 1)] + \
        [cell("a", s, 0.89, 0.3) for s in (0, 1)] + [cell("b", s, 0.85, 0.1) for s in (0, 1)] + \
        [cell("c", 0, 0.9, 0.0)]  # c lacks seed 1: not a candidate yet
    cands = race.candidates(records, ["a", "b", "c"], "pca", 2.0, [0, 1])
    assert [c.name for c in cands] == ["a", "b"]
    assert cands[0].drop == pytest.approx(1.0) and cands[1].drop == pytest.approx(5.0)
    assert race.select(cands).name == "a"  # b attacks less but costs 5 points
    assert race.select(race.candidates(records, ["b"], "pca", 2.0, [0, 1])) is None


def test_the_random_search_is_seeded_inside_the_box_with_the_fixes(tmp_path: Path) -> None:
    plan = load_plan(write_race(tmp_path))
    plan.race.random_points = 4
    rows = race.contestant_rows(plan)["c2"]
    again = race.contestant_rows(plan)["c2"]
    assert list(rows) == ["c2-r0", "c2-r1", "c2-r2", "c2-r3"] and rows == again
    for row in rows.values():
        if row.use in ("hybrid", "mixup"):
            assert row.options["mix_label_follow"] == 0.0 and row.options["mix_band"] == "low"
            assert 0.0125 <= row.options["mix_radius"][0] <= 0.2


def test_the_schedules_are_written_beside_the_plan_and_switch_where_named(tmp_path: Path) -> None:
    plan = load_plan(write_race(tmp_path))
    rows = race.contestant_rows(plan)
    assert set(rows["c3"]) == {"c3-strong-first-50", "c3-relaxed-first-50"}
    strong_first = load_schedule(rows["c3"]["c3-strong-first-50"].schedule)
    assert [p.params.radius for p in strong_first.phases] == [0.2, 0.025] and strong_first.phases[0].until == 0.5
    c4 = load_schedule(rows["c4"]["c4-uniform"].schedule)
    assert c4.phases[0].box is not None and c4.phases[0].box.ranges["label_follow"] == (0.0, 0.0)


def test_a_race_may_leave_out_the_baselines_c2_to_c4(tmp_path: Path) -> None:
    plan = load_plan(write_race(tmp_path, 'baselines = ["c4"]\n'))
    assert set(race.contestant_rows(plan)) == {"c4"}
    assert [f.name for f in (tmp_path / "race" / "schedules").iterdir()] == ["c4-uniform.toml"]  # no C3 files
    assert race.validation_plan(plan).rows == ["none", "c4-uniform"]


def test_test_seeds_must_be_fresh(tmp_path: Path) -> None:
    path = write_race(tmp_path)
    path.write_text(path.read_text().replace("test_seeds = [5]", "test_seeds = [0, 5]"))
    with pytest.raises(ValueError, match=r"test seeds must be fresh; \[0\]"):
        load_plan(path)


def test_rows_outside_the_rule_join_the_test_stage_but_never_as_picks(tmp_path: Path) -> None:
    plan = load_plan(write_race(tmp_path, 'test_extra = ["c4-uniform"]\n'))
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "plan.toml").write_text(TINY_PLAN + "[calibrate]\nparam = \"radius\"\nvalues = [0.05]\n")
    pick = race.Candidate("c2-r0", 1.0, 0.5, 0.2, 1, True)
    tp = race.test_plan(plan, {"c1": None, "c2": pick})
    assert tp.rows == ["none", "c2-r0", "c4-uniform"] and tp.seeds == [5]
    assert tp.defenses["c4-uniform"].schedule.endswith("c4-uniform.toml")
    plan.race.test_extra = ["c9-typo"]
    with pytest.raises(ValueError, match="test_extra 'c9-typo' is not a row of this race"):
        race.test_plan(plan, {"c1": None, "c2": pick})


def test_a_tiny_race_runs_both_stages_and_reports_against_c1(tmp_path: Path) -> None:
    (tmp_path / "cal").mkdir()
    calibration = tmp_path / "cal" / "plan.toml"
    calibration.write_text("seeds = [0]\n" + TINY_PLAN + "[calibrate]\nparam = \"radius\"\nvalues = [0.05]\nbudget = 100.0\n")
    assert main(["calibrate", "--config", str(calibration)]) == 0
    plan = write_race(tmp_path)
    assert main(["race", "--config", str(plan)]) == 0
    out = tmp_path / "race"
    val = {p.stem for p in (out / "validation" / "cells").glob("*.json")}
    assert val == {"none-s0", "c2-r0-s0", "c3-strong-first-50-s0", "c3-relaxed-first-50-s0", "c4-uniform-s0"}
    proxies = json.loads((out / "validation" / "cells" / "c4-uniform-s0.json").read_text())["proxies"]
    assert set(proxies) == {"proxy_pca5", "proxy_conf", "proxy_lowpass"}  # every cell gets the cheap proxies
    picks = json.loads((out / "race.json").read_text())
    assert picks["c1"]["pick"]["name"] == "cal-radius-0.05" and picks["c1"]["fr_runs"] == 1
    test = {p.stem for p in (out / "test" / "cells").glob("*.json")}
    assert test == {"none-s5", "cal-radius-0.05-s5", f"{picks['c2']['pick']['name']}-s5",
                    f"{picks['c3']['pick']['name']}-s5", "c4-uniform-s5"}
    md = (out / "race.md").read_text()
    assert "## Test: paired differences on the fresh seeds" in md and "C4 stochastic constant (`c4-uniform`)" in md
    # the report rebuilds from the cells alone
    (out / "race.md").unlink()
    assert main(["race", "--config", str(plan), "--summarize-only"]) == 0
    assert (out / "race.md").read_text() == md


def test_spearman_ranks_with_ties_as_scipy_does() -> None:
    assert race.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert race.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert race.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505139)  # scipy.stats.spearmanr
    assert math.isnan(race.spearman([1, 2], [1, 2])) and math.isnan(race.spearman([1, 1, 1], [1, 2, 3]))


def test_each_proxy_is_ranked_against_each_attack_over_the_cells_that_have_both() -> None:
    records = [{**cell("a", s, 0.9, top1), "proxies": {"proxy_conf": conf}}
               for s, (top1, conf) in enumerate([(0.1, 0.2), (0.3, 0.5), (0.5, 0.4), (0.7, 0.9)])]
    records.append(cell("b", 0, 0.9, 0.2))  # no proxies: left out
    agreement = race.proxy_agreement(records, ["pca"])
    assert agreement == {"proxy_conf": {"pca": (pytest.approx(0.8), 4)}}


def test_identity_stability_averages_the_rank_agreement_of_seed_pairs() -> None:
    def with_ids(defense: str, seed: int, per: dict) -> dict:
        c = cell(defense, seed, 0.9, 0.5)
        c["attacks"]["pca"]["identity_top1"] = per
        return c

    records = [with_ids("none", 0, {"0": 0.0, "1": 0.5, "2": 1.0}), with_ids("none", 1, {"0": 0.25, "1": 0.5, "2": 0.75}),
               with_ids("none", 2, {"0": 1.0, "1": 0.5, "2": 0.0}), cell("re", 0, 0.9, 0.5)]
    stability = race.identity_stability(records, "pca")
    assert stability == {"none": (pytest.approx((1.0 - 1.0 - 1.0) / 3), 3)}  # s0~s1 +1, s0~s2 -1, s1~s2 -1


ROOT = Path(__file__).resolve().parents[1]


def rebuilds_committed_report(tmp_path: Path, race_folder: str, *others: str) -> bool:
    """Copy the race folder and the folders it reads (cells and plans only), drop its race.md and
    rebuild it with ``veil race --summarize-only``: True when the rebuild equals the committed file."""
    import shutil

    results = ROOT / "docs" / "results"
    keep = shutil.ignore_patterns("reports", "checkpoints", "*.png", "superseded")
    for folder in (race_folder, *others):
        shutil.copytree(results / folder, tmp_path / folder, ignore=keep)
    committed = (results / race_folder / "race.md").read_text()
    (tmp_path / race_folder / "race.md").unlink()
    assert main(["race", "--config", str(tmp_path / race_folder / "plan.toml"), "--summarize-only"]) == 0
    return (tmp_path / race_folder / "race.md").read_text() == committed


def test_the_committed_att_race_report_rebuilds_from_its_cells(tmp_path: Path) -> None:
    """``veil race --config docs/results/att-race-90ep/plan.toml --summarize-only`` writes the
    committed race.md from the committed cells (the calibration folder's for C1)."""
    assert rebuilds_committed_report(tmp_path, "att-race-90ep", "att-calibrate-90ep", "att-label-follow-90ep")


def test_the_att_race_figures_in_results_come_from_the_committed_cells() -> None:
    """docs/RESULTS.md (Does learning pay: the race): the validation picks, the learners priced out
    by the rule, the proxies' rank agreement with PCA and the per-identity pilot."""
    plan = load_plan(ROOT / "docs" / "results" / "att-race-90ep" / "plan.toml")
    sel = race.selection(plan)
    figures = {c: {x.name: (round(x.drop, 1), round(100 * x.top1, 1)) for x in s["candidates"]} for c, s in sel.items()}
    assert sel["c1"]["pick"].name == "cal-radius-0.05" and figures["c1"]["cal-radius-0.05"] == (1.0, 24.7)
    assert sel["c2"]["pick"].name == "c2-r1" and figures["c2"]["c2-r1"] == (1.0, 29.5)
    assert figures["t1-ppo"]["t1-ppo"] == (3.5, 11.8) and figures["t0"]["t0-fr05"] == (2.5, 31.0)
    assert figures["c4"]["c4-uniform"] == (4.0, 23.2) and figures["c3"]["c3-strong-first-33"] == (8.0, 8.0)
    assert all(sel[c]["pick"] is None for c in ("c3", "c4", "t0", "t1-ppo"))
    assert [sel[c]["fr_runs"] for c in ("c1", "c2", "c3", "c4", "t0", "t1-ppo", "t1-pbt")] == [25, 25, 20, 5, 5, 25, 15]
    # PBT's pick: the one learner within the budget, a constant the radius grid could not express
    assert sel["t1-pbt"]["pick"].name == "t1-pbt" and figures["t1-pbt"]["t1-pbt"] == (2.0, 9.5)
    schedule = load_schedule(plan.row("t1-pbt").schedule)
    assert {(round(p.params.radius, 4), round(p.params.erase_p, 3)) for p in schedule.phases} == {(0.0795, 0.044)}
    val = race.validation_plan(plan)
    records = read_cells(Path(val.out_dir), set(val.rows), set(plan.race.validation_seeds))
    agreement = race.proxy_agreement(records, ["pca"])
    assert {k: (round(v["pca"][0], 2), v["pca"][1]) for k, v in agreement.items()} == {
        "proxy_conf": (0.88, 70), "proxy_lowpass": (0.84, 70), "proxy_pca5": (0.69, 70)}
    assert round(race.identity_stability(records, "pca")["none"][0], 2) == 0.62


def test_the_att_race_test_figures_in_results_come_from_the_committed_cells() -> None:
    """docs/RESULTS.md (the race, test stage): each row's natural and attack top-1 and its paired
    differences against none and C1, and the proxies' rank agreement with PCA and GMI."""
    plan = load_plan(ROOT / "docs" / "results" / "att-race-90ep" / "plan.toml")
    sel = race.selection(plan)
    tp = race.test_plan(plan, {c: s["pick"] for c, s in sel.items() if s["complete"]})
    records = read_cells(Path(tp.out_dir), set(tp.rows), set(plan.race.test_seeds))
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    section = results[results.index("**Test (seeds 10-14, complete for the picks).**"):]
    section = section[:section.index("**Finding the constant")]

    def fmt(m: float, ci: float, n: int) -> str:
        assert n == 5
        star = " \\*" if m + ci < 0 or m - ci > 0 else ""
        return f"{m:+.1f} ± {ci:.1f}{star}"

    natural = lambda x: 100 * x["natural_top1"]  # noqa: E731
    c1 = "cal-radius-0.05"
    for label, row in [("`none`", "none"), (f"C1 `{c1}`", c1), ("C2 `c2-r1`", "c2-r1"), ("T1 PBT `t1-pbt`", "t1-pbt"),
                       ("T1 PPO, outside the rule", "t1-ppo")]:
        cells = [x for x in records if x["defense"] == row]
        assert len(cells) == 5, row
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {label} |"))
        parts = [p.strip() for p in line.strip("|").split("|")]
        assert parts[1] == f"{sum(natural(x) for x in cells) / 5:.1f}%"
        assert parts[2] == ("-" if row == "none" else fmt(*paired(records, row, "none", natural)))
        for i, attack in ((3, "pca"), (5, "gmi")):
            assert parts[i] == f"{sum(100 * x['attacks'][attack]['top1'] for x in cells) / 5:.1f}%", (row, attack)
            against = "-" if row == c1 else fmt(*paired(records, row, c1, metric_points(attack, "top1")))
            assert parts[i + 1] == against, (row, attack)
    assert "costs 3.0 ± 3.4\npoints of accuracy against C1" in section
    for attack, claim in (("pca", "PCA top-1 15.7 points (32%)"), ("gmi", "GMI 24.0 points\n(62%)")):
        m = -paired(records, c1, "none", metric_points(attack, "top1"))[0]
        none = sum(100 * x["attacks"][attack]["top1"] for x in records if x["defense"] == "none") / 5
        assert claim.replace("\n", " ") in " ".join(section.split()) and claim.startswith(
            f"{attack.upper()} top-1 {m:.1f} points ({m / none:.0%})" if attack == "pca" else
            f"GMI {m:.1f} points\n({m / none:.0%})")
    assert fmt(*paired(records, "t1-ppo", c1, natural)).startswith("-3.0 ± 3.4")
    assert "costs 5.3 ± 3.4 points of accuracy against C1" in " ".join(section.split())
    assert fmt(*paired(records, "t1-pbt", c1, natural)) == "-5.3 ± 3.4 \\*"
    for metric, attack, claim in (("nn_pixel_acc", "pca", "-15.0 ± 8.1"), ("sink_share", "pca", "+3.0 ± 7.1")):
        assert fmt(*paired(records, "t1-pbt", c1, metric_points(attack, metric))).startswith(claim)
    agreement = race.proxy_agreement(records, ["pca", "gmi"])
    assert {k: tuple((round(v[a][0], 2), v[a][1]) for a in ("pca", "gmi")) for k, v in agreement.items()} == {
        "proxy_conf": ((0.85, 25), (0.70, 25)), "proxy_lowpass": ((0.81, 25), (0.71, 25)),
        "proxy_pca5": ((0.63, 25), (0.76, 25))}


def test_the_committed_syn_find_race_report_rebuilds_from_its_cells(tmp_path: Path) -> None:
    """``veil race --config docs/results/syn-find-30ep/plan.toml --summarize-only`` writes the
    committed race.md from the committed cells (C1's from syn-calibrate-30ep)."""
    import shutil

    results = ROOT / "docs" / "results"
    keep = shutil.ignore_patterns("reports", "checkpoints", "*.png")
    for folder in ("syn-find-30ep", "syn-calibrate-30ep"):
        shutil.copytree(results / folder, tmp_path / folder, ignore=keep)
    committed = (results / "syn-find-30ep" / "race.md").read_text()
    (tmp_path / "syn-find-30ep" / "race.md").unlink()
    assert main(["race", "--config", str(tmp_path / "syn-find-30ep" / "plan.toml"), "--summarize-only"]) == 0
    assert (tmp_path / "syn-find-30ep" / "race.md").read_text() == committed


def test_the_syn_find_figures_in_results_come_from_the_committed_cells() -> None:
    """docs/RESULTS.md, "Finding the constant faster than the grid": PBT's members and pick, the
    referee's validation replay against C1's pick, and the test table on the fresh seeds."""
    folder = ROOT / "docs" / "results" / "syn-find-30ep"
    plan = load_plan(folder / "plan.toml")
    results = " ".join((ROOT / "docs" / "RESULTS.md").read_text().split())
    section = results[results.index("**Finding the constant faster than the grid"):]
    section = section[:section.index("### The race on CFP (0.18)")]
    learned = json.loads((folder / "learned" / "t1-pbt.json").read_text())
    assert learned["fr_runs"] == 4 and f"({learned['seconds']:.0f} s" in section
    for m in learned["episodes"]:
        last = m["params"][-1]
        assert f"{100 * m['acc_val']:.1f}%, {100 * m['probe_top1']:.1f}%" in section, m["member"]
        assert f"{last['radius']:.3f}" in section, m["member"]
    assert f"run ({100 * learned['reference_acc']:.1f}%)" in section
    sel = race.selection(plan)
    c1, t1 = sel["c1"]["pick"], sel["t1-pbt"]["pick"]
    assert c1.name == "cal-radius-0.1" and sel["c1"]["fr_runs"] == 12 and sel["t1-pbt"]["fr_runs"] == 7
    assert f"{t1.drop:+.1f} ± {t1.drop_ci:.1f} points against `none`" in section
    assert f"PCA top-1 {100 * t1.top1:.1f}%, against C1's pick `cal-radius-0.1` {c1.drop:+.1f} / {100 * c1.top1:.1f}%" \
        in section
    tp = race.test_plan(plan, {c: s["pick"] for c, s in sel.items() if s["complete"]})
    records = read_cells(Path(tp.out_dir), set(tp.rows), set(plan.race.test_seeds))

    def fmt(m: float, ci: float, n: int) -> str:
        assert n == 3
        star = " \\*" if m + ci < 0 or m - ci > 0 else ""
        return f"{m:+.1f} ± {ci:.1f}{star}"

    natural = lambda x: 100 * x["natural_top1"]  # noqa: E731
    for label, row in (("`none`", "none"), ("C1 `cal-radius-0.1`", "cal-radius-0.1"), ("T1 PBT `t1-pbt`", "t1-pbt")):
        cells = [x for x in records if x["defense"] == row]
        nat = f"{sum(natural(x) for x in cells) / 3:.1f}%"
        assert re.search(re.escape(f"| {label}") + r"[^|]*\| " + re.escape(nat) + " |", section), (row, nat)
        for attack in ("pca", "gmi"):
            assert f"{sum(100 * x['attacks'][attack]['top1'] for x in cells) / 3:.1f}%" in section, (row, attack)
    fig = {a: fmt(*paired(records, "t1-pbt", "cal-radius-0.1", metric_points(a, "top1"))) for a in ("pca", "gmi")}
    assert fig == {"pca": "-7.9 ± 3.6 \\*", "gmi": "-1.7 ± 3.6"}
    assert fmt(*paired(records, "t1-pbt", "cal-radius-0.1", natural)) == "-1.5 ± 2.7"
    assert fmt(*paired(records, "t1-pbt", "none", natural)) == "-0.4 ± 2.5"
    for metric, claim in (("nn_pixel_acc", "-4.6 ± 4.7"), ("sink_share", "+2.1 ± 10.0")):
        assert fmt(*paired(records, "t1-pbt", "cal-radius-0.1", metric_points("pca", metric))) == claim
        assert f"({claim} against C1)" in section or f"({claim})" in section
    agreement = race.proxy_agreement(records, ["pca", "gmi"])
    for proxy, claim in (("proxy_conf", "+0.92 against PCA and +0.85 against GMI"),
                         ("proxy_pca5", "+0.87 and +0.85"), ("proxy_lowpass", "+0.56 and +0.63")):
        assert f"{agreement[proxy]['pca'][0]:+.2f}" in claim and f"{agreement[proxy]['gmi'][0]:+.2f}" in claim
        assert f"`{proxy}` {claim}" in section


def test_the_cfp_race_validation_figures_in_results_come_from_the_committed_cells() -> None:
    """docs/RESULTS.md, "The race on CFP": every candidate's drop and PCA top-1, each contestant's pick
    and compute, what the learners found and took, the proxies and the per-identity pilot."""
    folder = ROOT / "docs" / "results" / "cfp-race-60ep"
    plan = load_plan(folder / "plan.toml")
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    section = results[results.index("### The race on CFP (0.18)"):]
    section = section[:section.index("### CFP: the agents against their fixed start")]
    flat = " ".join(section.split())
    sel = race.selection(plan)
    labels = {"c1": "C1 grid", "c2": "C2 random search", "c3": "C3 two-phase schedules",
              "c4": "C4 stochastic constant", "t0": "T0 the game's `edge` agents", "t1-ppo": "T1 PPO over whole runs",
              "t1-pbt": "T1 PBT over whole runs"}
    short = {"cal-radius-0.05": "r 0.05", "cal-radius-0.1": "0.1", "cal-radius-0.2": "0.2", "c2-r0": "r0",
             "c2-r1": "r1", "c2-r2": "r2", "c3-strong-first-33": "strong first, switch 1/3", "c3-strong-first-67": "2/3",
             "c3-relaxed-first-33": "relaxed first, 1/3", "c3-relaxed-first-67": "2/3"}
    for c, label in labels.items():
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {label} ("))
        assert line.startswith(f"| {label} ({sel[c]['fr_runs']:g}") and line.endswith(f"| `{sel[c]['pick'].name}` |")
        for x in sel[c]["candidates"]:
            figure = f"{x.drop:+.1f} / {100 * x.top1:.1f}%".replace("+-", "-")
            entry = f"{short[x.name]}: {figure}" if x.name in short else figure
            assert (f"**{entry}**" if x is sel[c]["pick"] else entry) in line, (c, x.name)
    val = race.validation_plan(plan)
    records = read_cells(Path(val.out_dir), set(val.rows), set(plan.race.validation_seeds))
    none = [x for x in records if x["defense"] == "none"]
    assert len(none) == 3
    assert f"`none` {100 * sum(x['natural_top1'] for x in none) / 3:.1f}% natural top-1, PCA " \
           f"{100 * sum(x['attacks']['pca']['top1'] for x in none) / 3:.1f}%" in flat
    for name, claim in (("t1-ppo", "minutes for its 6 episodes"), ("t1-pbt", "minutes for 6 members")):
        learned = json.loads((folder / "learned" / f"{name}.json").read_text())
        assert learned["fr_runs"] == 6 and f"{learned['seconds'] / 60:.0f} {claim}" in flat, name
    ppo, pbt = (load_schedule(plan.row(n).schedule) for n in ("t1-ppo", "t1-pbt"))
    assert "radius " + ", ".join(f"{p.params.radius:.3f}" for p in ppo.phases) in flat
    assert "probability " + ", ".join(f"{p.params.erase_p:.2f}" for p in ppo.phases) in flat
    assert {(round(p.params.radius, 3), round(p.params.erase_p, 2)) for p in pbt.phases} == {(0.161, 0.44)}
    agreement = race.proxy_agreement(records, ["pca"])
    for proxy, (rho, n) in ((k, v["pca"]) for k, v in agreement.items()):
        assert n == 36 and f"`{proxy}` {rho:+.2f}" in flat, proxy
    assert f"`none` {race.identity_stability(records, 'pca')['none'][0]:+.2f}" in flat
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"(PCA top-1 {100 * sel['c1']['pick'].top1:.1f}% for the grid, {100 * sel['t1-ppo']['pick'].top1:.1f}% "
            f"for PPO's schedule, {100 * sel['t1-pbt']['pick'].top1:.1f}% for PBT's constant)") in readme


def test_the_committed_cfp_race_report_rebuilds_from_its_cells(tmp_path: Path) -> None:
    """``veil race --config docs/results/cfp-race-60ep/plan.toml --summarize-only`` writes the
    committed race.md (validation, both test seeds' judges, the paired test table) from the cells."""
    assert rebuilds_committed_report(tmp_path, "cfp-race-60ep", "cfp-calibrate-60ep", "cfp-label-follow-60ep")


CFP_TEST_ROWS = [("`none`", "none"), ("C1 `cal-radius-0.2`", "cal-radius-0.2"), ("C2 `c2-r2`", "c2-r2"),
                 ("C3 `c3-strong-first-67`", "c3-strong-first-67"), ("C4 `c4-uniform`", "c4-uniform"),
                 ("T0 `t0-edge`", "t0-edge"), ("T1 PPO `t1-ppo`", "t1-ppo"), ("T1 PBT `t1-pbt`", "t1-pbt")]


def test_the_cfp_race_test_figures_in_results_come_from_the_committed_cells() -> None:
    """docs/RESULTS.md, "The race on CFP", test stage: every row's natural and attack top-1, its
    paired differences against none and C1, the learners' pixel-neighbour and sink differences, the
    proxies against PCA and GMI, and the seeds' judges."""
    plan = load_plan(ROOT / "docs" / "results" / "cfp-race-60ep" / "plan.toml")
    sel = race.selection(plan)
    tp = race.test_plan(plan, {c: s["pick"] for c, s in sel.items() if s["complete"]})
    seeds = plan.race.test_seeds
    records = read_cells(Path(tp.out_dir), set(tp.rows), set(seeds))
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    section = results[results.index("**Test (seeds 10-14).**"):]
    section = section[:section.index("### CFP: the agents against their fixed start")]
    flat = " ".join(section.split())
    natural = lambda x: 100 * x["natural_top1"]  # noqa: E731
    c1 = "cal-radius-0.2"

    def fmt(m: float, ci: float, n: int) -> str:
        assert n == len(seeds)
        return fmt_paired(m, ci, n)

    for label, row in CFP_TEST_ROWS:
        cells = [x for x in records if x["defense"] == row]
        assert sorted(x["seed"] for x in cells) == seeds, row
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {label} |"))
        parts = [p.strip() for p in line.strip("|").split("|")]
        assert parts[1] == f"{sum(natural(x) for x in cells) / len(seeds):.1f}%", row
        assert parts[2] == ("-" if row == "none" else fmt(*paired(records, row, "none", natural))), row
        for i, attack in ((3, "pca"), (5, "gmi")):
            mean = sum(100 * x["attacks"][attack]["top1"] for x in cells) / len(seeds)
            assert parts[i] == f"{mean:.1f}%", (row, attack)
            assert parts[i + 1] == ("-" if row == c1 else fmt(*paired(records, row, c1, metric_points(attack, "top1"))))
    for label, row in CFP_TEST_ROWS[2:]:
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {label} | natural"))
        parts = [p.strip() for p in line.strip("|").split("|")]
        expect = [fmt(*paired(records, row, c1, natural))] + [
            fmt(*paired(records, row, c1, metric_points(a, m))) for a in ("pca", "gmi")
            for m in ("nn_pixel_acc", "sink_share")]
        assert parts[1:] == ["natural " + expect[0]] + expect[1:], row
    for attack in ("pca", "gmi"):
        m = -paired(records, c1, "none", metric_points(attack, "top1"))[0]
        none = sum(100 * x["attacks"][attack]["top1"] for x in records if x["defense"] == "none") / len(seeds)
        assert f"{attack.upper()} top-1 {m:.1f} points ({m / none:.0%})" in flat, attack
    for proxy, v in race.proxy_agreement(records, ["pca", "gmi"]).items():
        assert f"`{proxy}` {v['pca'][0]:+.2f} against PCA and {v['gmi'][0]:+.2f} against GMI" in flat, proxy
        assert v["pca"][1] == v["gmi"][1] == 8 * len(seeds)
    for s, judge in race.seed_judges(records, ["pca", "gmi"]).items():
        assert f"{s} `{judge}`" in flat, s
