"""A plan run over several machines (``[attacks] judge_scope = "seed"``): evaluation models trained on
two machines differ in their last bits, so each seed's rows are judged by one model and a finished
seed keeps its judge, while an unfinished one is redone under this machine's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from veil.agents import race
from veil.agents.benchmark import cell_state, seed_judges
from veil.agents.cli import main
from veil.agents.plan import AttackPlan, load_plan

HERE, OTHER = "aaaaaaaaaaaa@0.5000", "bbbbbbbbbbbb@0.5100"
PLAN = """
out_dir = "out"
rows = ["none", "re"]
seeds = [0, 1]
[attacks]
names = ["pca", "gmi"]
judge_scope = "{scope}"
"""
SPLIT = SimpleNamespace(kind="test")


def write_plan(tmp_path: Path, scope: str = "seed"):
    (tmp_path / "plan.toml").write_text(PLAN.format(scope=scope))
    return load_plan(tmp_path / "plan.toml")


def write_cell(plan, row: str, seed: int, judge: str, attacks: tuple[str, ...] = ("pca", "gmi")) -> Path:
    cell = Path(plan.out_dir) / "cells" / f"{row}-s{seed}.json"
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps({"defense": row, "seed": seed, "natural_top1": 0.5, "natural_top5": 0.8,
                                "split": "test", "options": {},
                                "attacks": {a: {"top1": 0.25, "evaluator": judge} for a in attacks}}))
    return cell


def test_a_finished_seed_keeps_the_judge_all_its_cells_share(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    for row in ("none", "re"):
        write_cell(plan, row, 0, OTHER)
    write_cell(plan, "none", 1, OTHER)  # seed 1 lacks re: unfinished, judged here
    assert seed_judges(plan, [0, 1], HERE) == {0: OTHER, 1: HERE}


def test_a_seed_missing_an_attack_or_scored_by_two_judges_is_judged_here(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    write_cell(plan, "none", 0, OTHER)
    write_cell(plan, "re", 0, OTHER, attacks=("pca",))
    write_cell(plan, "none", 1, OTHER)
    write_cell(plan, "re", 1, "cccccccccccc@0.4900")
    assert seed_judges(plan, [0, 1], HERE) == {0: HERE, 1: HERE}


def test_a_run_of_some_rows_keeps_a_seed_only_when_every_row_of_the_block_agrees(tmp_path: Path) -> None:
    """``race --only`` and ``benchmark --defenses`` run some of a plan's rows; the block is all of them."""
    plan = write_plan(tmp_path)
    write_cell(plan, "none", 0, OTHER)  # re-s0 never finished
    assert seed_judges(plan, [0], HERE, rows=("none",)) == {0: OTHER}
    assert seed_judges(plan, [0], HERE, rows=("none", "re")) == {0: HERE}


def test_plan_scope_judges_every_seed_here(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, scope="plan")
    for row in ("none", "re"):
        write_cell(plan, row, 0, OTHER)
    assert seed_judges(plan, [0], HERE) == {0: HERE}


def test_seed_scope_sets_aside_a_foreign_cell_whose_target_is_gone(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    cell = write_cell(plan, "none", 1, OTHER)
    done, missing = cell_state(plan, "none", 1, SPLIT, HERE, quiet=True)
    assert done is None and missing == ["pca", "gmi"] and not cell.exists()
    aside = Path(plan.out_dir) / "cells" / "superseded" / "none-s1-bbbbbbbbbbbb.json"
    assert json.loads(aside.read_text())["attacks"]["pca"]["evaluator"] == OTHER


def test_plan_scope_keeps_the_cell_and_asks_for_its_attacks_again(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, scope="plan")
    cell = write_cell(plan, "none", 1, OTHER)
    done, missing = cell_state(plan, "none", 1, SPLIT, HERE, quiet=True)
    assert done is not None and done["attacks"] == {} and missing == ["pca", "gmi"] and cell.exists()


def test_a_cell_of_a_kept_seed_is_done(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    write_cell(plan, "none", 0, OTHER)
    done, missing = cell_state(plan, "none", 0, SPLIT, OTHER, quiet=True)
    assert missing == [] and done["attacks"]["gmi"]["evaluator"] == OTHER


def test_the_race_report_refuses_a_seed_scored_by_two_judges() -> None:
    records = [{"seed": 10, "attacks": {"pca": {"evaluator": HERE}}},
               {"seed": 10, "attacks": {"pca": {"evaluator": OTHER}}},
               {"seed": 11, "attacks": {"pca": {"evaluator": OTHER}}}]
    with pytest.raises(ValueError, match="seed 10's cells were scored by 2 evaluation models"):
        race.seed_judges(records, ["pca"])
    assert race.seed_judges(records[1:], ["pca"]) == {10: OTHER, 11: OTHER}


def test_an_unknown_judge_scope_is_one_line() -> None:
    with pytest.raises(ValueError, match='judge_scope must be "plan" or "seed", got \'machine\''):
        AttackPlan(judge_scope="machine")


def test_a_benchmark_keeps_a_finished_seed_and_redoes_an_unfinished_one(tmp_path: Path) -> None:
    """End to end on a tiny plan: seed 0, finished under another judge, is skipped as it is; seed 1,
    whose ``re`` cell never finished and whose ``none`` was judged elsewhere with its target gone,
    is trained and judged again here."""
    args = ["benchmark", "--data", "synthetic", "--synthetic-identities", "6", "--synthetic-images", "6",
            "--image-size", "32", "--batch-size", "16", "--threads", "1", "--epochs", "1", "--attacks", "pca",
            "--steps", "5", "--restarts", "1", "--attack-seeds", "1", "--eval-epochs", "1", "--defenses", "none,re",
            "--seeds", "0,1", "--judge-scope", "seed", "--out-dir", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(args) == 0
    out = tmp_path / "out"
    here = json.loads((out / "cells" / "none-s0.json").read_text())["attacks"]["pca"]["evaluator"]
    for cell in ("none-s0", "re-s0", "none-s1"):  # as if judged on another machine, targets left behind
        record = json.loads((out / "cells" / f"{cell}.json").read_text())
        record["attacks"]["pca"]["evaluator"] = OTHER
        (out / "cells" / f"{cell}.json").write_text(json.dumps(record))
        (out / "checkpoints" / f"{cell}.pt").unlink()
    (out / "cells" / "re-s1.json").unlink()
    kept = {c: (out / "cells" / f"{c}.json").read_text() for c in ("none-s0", "re-s0")}
    assert main(args) == 0
    assert {c: (out / "cells" / f"{c}.json").read_text() for c in kept} == kept  # not retrained, not rescored
    for cell in ("none-s1", "re-s1"):
        assert json.loads((out / "cells" / f"{cell}.json").read_text())["attacks"]["pca"]["evaluator"] == here
    assert (out / "checkpoints" / "none-s1.pt").is_file()  # trained again
    assert json.loads((out / "cells" / "superseded" / "none-s1-bbbbbbbbbbbb.json").read_text())["seed"] == 1
