"""``veil demo``: an undefended and a defended model, attacked, ending in a table and a verdict."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import demo
from veil.agents.cli import main
from veil.agents.plan import load_plan

ROOT = Path(__file__).resolve().parents[1]


def cell(natural: float, top1: float, nn_pixel: float = 0.4, sink: float = 0.1) -> dict:
    return {"defense": "x", "seed": 0, "natural_top1": natural,
            "attacks": {"pca": {"top1": top1, "nn_pixel_acc": nn_pixel, "sink_share": sink}}}


def test_the_verdict_says_protected_with_the_price_within_budget() -> None:
    line = demo.verdict(cell(0.90, 0.60), cell(0.89, 0.20, nn_pixel=0.1))
    assert line.startswith("Verdict: protected: the pca attack recovered 20% of the identities instead of 60% (67% fewer)")
    assert "at 1.0 points of accuracy (within veil's 2-point budget)" in line


def test_the_verdict_says_so_when_the_defense_made_things_worse() -> None:
    line = demo.verdict(cell(0.85, 0.35), cell(0.77, 0.40))
    assert line.startswith("Verdict: no protection here: the pca attack recovered 40% of the identities from the "
                           "defended model against 35%")
    assert "at 8.0 points of accuracy, more than veil's 2-point budget" in line


def test_a_verdict_over_budget_points_to_pricing_the_radius_on_the_users_data() -> None:
    line = demo.verdict(cell(0.967, 0.50), cell(0.867, 0.15))
    assert line.startswith("Verdict: protected: the pca attack recovered 15% of the identities instead of 50% (70% fewer)")
    assert "at 10.0 points of accuracy, more than veil's 2-point budget" in line and "veil calibrate" in line


def test_a_verdict_within_budget_does_not_ask_for_a_calibration() -> None:
    assert "veil calibrate" not in demo.verdict(cell(0.90, 0.60), cell(0.89, 0.20))


def test_the_verdict_flags_a_fall_in_top1_that_the_pixel_check_does_not_share() -> None:
    line = demo.verdict(cell(0.90, 0.60, nn_pixel=0.3), cell(0.90, 0.40, nn_pixel=0.35, sink=0.5))
    assert "protected partly" in line and "(33% fewer)" in line
    assert "pixel-space neighbour check did not fall" in line and "sink class" in line


def test_the_table_sets_the_two_models_side_by_side_with_their_changes() -> None:
    table = demo.side_by_side(cell(0.90, 0.60), cell(0.85, 0.30))
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| undefended | 90.0% | 60.0% |")
    assert lines[3].startswith("| recommended | 85.0% (-5.0) | 30.0% (-30.0, -50% relative) |")


def test_the_demo_defends_with_the_radius_its_calibration_picked() -> None:
    calibration = ROOT / "docs" / "results" / "demo-calibrate" / "calibration.json"
    picked = json.loads(calibration.read_text())
    plan = load_plan(demo.DEMO_PLAN)
    cal = load_plan(calibration.with_name("plan.toml"))
    assert plan.data == cal.data and plan.split == cal.split and plan.budget == cal.budget
    assert plan.defenses["recommended"].options["mix_radius"] == [picked["chosen"]]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished tiny demo: its output folder and what it printed (its MLflow store in ``mlruns/``)."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VEIL_CACHE_DIR", str(root / "cache"))
        mp.setenv("VEIL_MLRUNS", str(root / "mlruns"))
        mp.delenv("VEIL_TRACKING_URI", raising=False)
        mp.setattr(demo, "HEARTBEAT", 1.0)
        tiny = demo.DEMO_PLAN.read_text().replace("synthetic_identities = 40", "synthetic_identities = 8").replace(
            "synthetic_images = 30", "synthetic_images = 8\nimage_size = 32").replace("n_private = 20", "n_private = 4")
        tiny = tiny.replace("identities = 20", "identities = 4\nsteps = 10")
        (root / "tiny.toml").write_text(tiny)
        out = root / "demo"
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["demo", "--config", str(root / "tiny.toml"), "--epochs", "1", "--eval-epochs", "1",
                         "--out-dir", str(out)]) == 0
        yield out, buf.getvalue()


def test_a_tiny_demo_ends_with_a_verdict_and_its_plot_and_grid(tiny_demo: tuple[Path, str]) -> None:
    out, text = tiny_demo
    assert "| undefended |" in text and "| recommended |" in text and "\nVerdict: " in text
    assert "s elapsed; none: " in text  # progress lines while the rows train, terminal or not
    assert (out / "privacy_utility.png").is_file() and (out / "grid-pca.png").is_file()
    cells = {p.stem for p in (out / "cells").glob("*.json")}
    assert cells == {"none-s0", "recommended-s0"}


def test_a_tiny_demos_store_shows_privacy_beside_accuracy_on_every_run_that_trained(
        tiny_demo: tuple[Path, str]) -> None:
    """The runs table, collapsed or not: each row's run and its FR run carry natural top-1 and the
    attack's top-1 with its two checks, and name their row (``veil.row``; ``veil.defense`` of the
    FR run names what train-fr applied, e.g. ``re,mixup``); the experiment opens on runs."""
    out, _ = tiny_demo
    mlflow.set_tracking_uri(f"sqlite:///{out.parent / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("veil")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in MlflowClient().search_runs([exp.experiment_id])}
    for row in ("none", "recommended"):
        cell = json.loads((out / "cells" / f"{row}-s0.json").read_text())
        pca = cell["attacks"]["pca"]
        expected = {"final_test_top1": cell["natural_top1"], "attack.pca.top1": pca["top1"],
                    "attack.pca.nn_pixel": pca["nn_pixel_acc"], "attack.pca.sink_share": pca["sink_share"]}
        for name in (f"demo-{row}", f"{row}-s0"):
            run = runs[name]
            assert run.data.tags["veil.row"] == row, name
            for key, value in expected.items():
                assert run.data.metrics[key] == pytest.approx(value, abs=1e-6), (name, key)
    assert runs["recommended-s0"].data.tags["veil.defense"] == "re,mixup"  # hybrid: mixup, then erasing


def test_the_demo_calibration_figures_in_results_come_from_its_cells() -> None:
    """docs/RESULTS.md, "The demo": each radius's drop and PCA top-1, as the calibration computed them."""
    calibration = json.loads((ROOT / "docs" / "results" / "demo-calibrate" / "calibration.json").read_text())
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    section = results[results.index("### The demo (0.18)"):results.index("## How to read the tables")]
    assert f"`none` {100 * calibration['none_top1']['pca']:.1f}%" in section
    for c in calibration["candidates"]:
        figure = f"+{c['drop']:.1f} ± {c['drop_ci']:.1f} / {100 * c['attack_top1']['pca']:.1f}%"
        assert figure in section, (c["value"], figure)
    assert f"picks r {calibration['chosen']:g}" in section


def test_the_timed_demo_run_in_results_is_its_committed_cells() -> None:
    """docs/RESULTS.md, "The demo's run and its time": the figures and the verdict of the timed
    run are those of its committed cells, and the run used the demo plan that ships."""
    folder = ROOT / "docs" / "results" / "demo-run"
    assert load_plan(folder / "plan.toml").defenses == load_plan(demo.DEMO_PLAN).defenses
    none, rec = (json.loads((folder / "cells" / f"{r}-s0.json").read_text()) for r in ("none", "recommended"))
    results = " ".join((ROOT / "docs" / "RESULTS.md").read_text().split())
    section = results[results.index("**The demo's run and its time**"):results.index("**The demo on other faces**")]
    for claim in _claims(none, rec):
        assert claim in section, claim
    assert demo.verdict(none, rec).startswith("Verdict: protected partly") and "within veil's 2-point budget" in \
        demo.verdict(none, rec)


def test_the_demo_on_att_in_results_is_its_committed_cells() -> None:
    """docs/RESULTS.md, "The demo on other faces": the AT&T run's figures and its over-budget
    verdict are those of its committed cells, run with the demo plan's rows."""
    folder = ROOT / "docs" / "results" / "demo-att"
    plan = load_plan(folder / "plan.toml")
    assert plan.defenses == load_plan(demo.DEMO_PLAN).defenses and plan.data.source == "att"
    none, rec = (json.loads((folder / "cells" / f"{r}-s0.json").read_text()) for r in ("none", "recommended"))
    results = " ".join((ROOT / "docs" / "RESULTS.md").read_text().split())
    section = results[results.index("**The demo on other faces**"):results.index("## How to read the tables")]
    for claim in _claims(none, rec):
        assert claim in section, claim
    said = demo.verdict(none, rec)
    assert f"at {100 * (none['natural_top1'] - rec['natural_top1']):.1f} points of accuracy" in section
    assert "more than veil's 2-point budget" in said and "veil calibrate" in said
    readme = " ".join((ROOT / "README.md").read_text().split())
    a, b = (100 * c["attacks"]["pca"]["top1"] for c in (none, rec))
    assert f"(PCA {a:.0f}% -> {b:.0f}%) but costs {100 * (none['natural_top1'] - rec['natural_top1']):.0f} points" \
        in readme


def _claims(none: dict, rec: dict) -> list[str]:
    """The figures a demo paragraph states, as the cells give them."""
    a, b = none["attacks"]["pca"], rec["attacks"]["pca"]
    return list((f"undefended {100 * none['natural_top1']:.1f}% natural, PCA top-1 {100 * a['top1']:.1f}%",
                  f"recommended {100 * rec['natural_top1']:.1f}% "
                  f"({100 * (rec['natural_top1'] - none['natural_top1']):+.1f}), PCA {100 * b['top1']:.1f}%",
                  f"({100 * (b['top1'] - a['top1']):+.1f}, {1 - b['top1'] / a['top1']:.0%} fewer)",
                  f"pixel-space neighbour {100 * a['nn_pixel_acc']:.0f}% -> {100 * b['nn_pixel_acc']:.0f}%",
                  f"sink share {100 * a['sink_share']:.0f}% -> {100 * b['sink_share']:.0f}%"))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_judge_trains_on_the_same_threads_whatever_jobs_says(jobs: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Float sums differ with the thread count: a judge trained on one thread scored the same FR
    models differently (RESULTS, the demo), so --jobs must not change it."""
    seen: list[int] = []

    def judge(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt  # stop before anything trains

    monkeypatch.setattr(demo, "train_eval_model", judge)
    monkeypatch.setattr(demo, "load_faces", lambda *a, **k: None)
    monkeypatch.setattr(demo, "split_identities", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--jobs", jobs, "--out-dir", str(tmp_path / "demo")])
    assert seen == [demo.EVAL_THREADS] == [2]


def test_the_one_thread_judge_in_results_is_its_committed_cells() -> None:
    """docs/RESULTS.md, "The judge moves the demo": the same FR models as the timed run, another
    judge, and the figures it gave."""
    timed, other = (ROOT / "docs" / "results" / "demo-run" / "cells", ROOT / "docs" / "results" / "demo-run" /
                    "judge-1-thread")
    a, b = ({r: json.loads((d / f"{r}-s0.json").read_text()) for r in ("none", "recommended")} for d in (timed, other))
    for r in ("none", "recommended"):
        assert a[r]["natural_top1"] == b[r]["natural_top1"]
        assert a[r]["attacks"]["pca"]["evaluator"] != b[r]["attacks"]["pca"]["evaluator"]
        assert a[r]["attacks"]["pca"]["nn_pixel_acc"] == b[r]["attacks"]["pca"]["nn_pixel_acc"]
    results = " ".join((ROOT / "docs" / "RESULTS.md").read_text().split())
    section = results[results.index("**The judge moves the demo"):results.index("**The demo on other faces**")]
    n, d = (100 * b[r]["attacks"]["pca"]["top1"] for r in ("none", "recommended"))
    na, da = (100 * a[r]["attacks"]["pca"]["top1"] for r in ("none", "recommended"))
    assert f"PCA top-1 {n:.1f}% -> {d:.1f}% ({1 - d / n:.0%} fewer) instead of {na:.1f}% -> {da:.1f}%" in section
    px = [100 * b[r]["attacks"]["pca"]["nn_pixel_acc"] for r in ("none", "recommended")]
    assert f"stayed {px[0]:.0f}% -> {px[1]:.0f}%" in section
