"""The docs say what the committed cells say: every figure of the README's headline and of RESULTS'
at-a-glance table is recomputed from docs/results/*/cells (``summarize``, ``target_verdict``,
``veil calibrate``'s ``evaluate``), never compared with other doc text; and the docs hold
together (links and anchors resolve, the README states the test command CI runs, it stays short,
no face image is committed)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

from veil.agents.benchmark import summarize, target_verdict
from veil.agents.calibrate import evaluate

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("pca", "gmi", "kedmi", "plgmi")
DOCS = ("README.md", "CHANGELOG.md", "docs/RESULTS.md", "docs/deploy.md", "docs/reference.md")


@functools.lru_cache(maxsize=None)
def _cells(section: str, seeds: tuple[int, ...] | None = None) -> tuple[dict, ...]:
    """The cell records committed in docs/results/<section>/cells (those of ``seeds``, default all)."""
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "docs" / "results" / section / "cells").glob("*.json"))]
    return tuple(r for r in records if seeds is None or r["seed"] in seeds)


@functools.lru_cache(maxsize=None)
def _rows(section: str, attacks: tuple[str, ...] = ATTACKS,
          seeds: tuple[int, ...] | None = (0, 1, 2)) -> dict[tuple[str, str], dict]:
    """``summarize`` of a section's committed cells, by (defense, attack); computed once per argument set."""
    records = list(_cells(section, seeds))
    defenses = sorted({r["defense"] for r in records})
    return {(r["defense"], r["attack"]): r for r in summarize(records, defenses, list(attacks))}


def _section(doc: str, heading: str) -> str:
    """The text of ``doc`` under ``heading`` (a whole heading line) up to the next heading of its level or higher."""
    text = (ROOT / doc).read_text()
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index("\n" + heading + "\n") + len(heading) + 2
    end = re.search(rf"^#{{1,{level}}} ", text[start:], flags=re.M)
    return text[start:start + end.start()] if end else text[start:]


def _table(text: str) -> list[list[str]]:
    """The first Markdown table in ``text``: its body rows as lists of cells, markup stripped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:  # past the header and its rule
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("**", "").replace("\\*", "*") for c in line.strip().strip("|").split("|")])
    return rows


def _check_attack_cell(cell: str, row: dict, where: tuple) -> None:
    """One published attack cell: the paired change and its interval, the relative drop where one is
    given, and 'met' exactly where the issue's target is met (3 seeds)."""
    assert row["seeds"] == 3 and cell.startswith(row["vs_none_paired"]), (where, cell, row["vs_none_paired"])
    first = cell.split(";")[0]
    if "%" in first:
        assert f"({100 * row['relative_drop']:.0f}%" in first, (where, cell)
    assert ("met" in first) == target_verdict(row)[0], (where, cell)


# RESULTS' at-a-glance table: the rows' labels, and where each data set's cells are
GLANCE_SOURCES = {"CFP": "cfp-label-follow-60ep", "synthetic": "syn-price-30ep", "AT&T": "att-label-follow-90ep"}
GLANCE_NAMES = {"learned policy `edge`": "edge", "its fixed start `c125`": "c125", "fixed random erasing": "re",
                "fixed frequency MixUp": "mixup", "negative label smoothing (best published)": "negls",
                "learned policy `price`": "price", "learned policy `fr05`": "fr05"}


def test_results_at_a_glance_is_what_the_committed_cells_give() -> None:
    """Every figure of docs/RESULTS.md's at-a-glance table is recomputed from the cells committed
    beside it: accuracy change, paired change with its interval, relative drop, met or not, per
    attack (the synthetic PCA row on 5 seeds too)."""
    table = _table(_section("docs/RESULTS.md", "## At a glance"))
    assert len(table) == 11
    data = ""
    for cells in table:
        data = cells[0].split(",")[0].split(" ")[0] or data
        rows = _rows(GLANCE_SOURCES[data])
        defense = GLANCE_NAMES[cells[1]]
        assert cells[2] == f"{100 * rows[defense, 'pca']['natural_vs_none']:+.1f}", (data, defense)
        for a, cell in zip(ATTACKS, cells[3:]):
            _check_attack_cell(cell, rows[defense, a], (data, defense, a))
    five = _rows("syn-price-30ep", ("pca",), seeds=(0, 1, 2, 3, 4))["price", "pca"]
    assert five["seeds"] == 5 and target_verdict(five)[0]
    assert f"5 seeds {five['vs_none_paired']} ({100 * five['relative_drop']:.0f}%, met)" in table[5][3]
