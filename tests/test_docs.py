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

from veil.agents import race
from veil.agents.benchmark import read_cells
from veil.agents.calibrate import evaluate
from veil.agents.plan import load_plan
from veil.agents.tables import against, headline, metric_points, natural_points, paired, summarize, target_verdict

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("pca", "gmi", "kedmi", "plgmi")
DOCS = ("README.md", "CHANGELOG.md", "docs/RESULTS.md", "docs/deploy.md", "docs/reference.md", "docs/attacks-peer-check.md",
        "docs/scale.md")


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


def _numbers(text: str) -> list[str]:
    """The figures written in ``text`` (inline code and link targets left out), in order."""
    text = re.sub(r"`[^`]*`|\]\([^)]*\)", " ", text)
    return re.findall(r"\d+(?:\.\d+)?", text)


def _cfp_claims() -> dict[str, str]:
    """The CFP figures the headline prose and the deploy warning state, recomputed: the protecting
    rows' drops and costs, and the calibration's price of its chosen radius against that radius's
    cost on the test split."""
    rows = _rows("cfp-label-follow-60ep")
    drops = {d: [round(100 * rows[d, a]["relative_drop"]) for a in ("pca", "gmi", "kedmi")] for d in ("edge", "c125")}
    cost = {d: -rows[d, "pca"]["natural_vs_none"] * 100 for d in ("edge", "c125")}
    cal = evaluate(list(_cells("cfp-calibrate-60ep")), "radius", [0.05, 0.1, 0.2], ["pca"], budget=2.0)
    chosen = min((c for c in cal if c.within_budget), key=lambda c: c.attack_top1["pca"])
    c20 = _cells("cfp-label-follow-60ep", (0, 1, 2))
    assert {tuple(r["train_args"][r["train_args"].index("--mix-radius") + 1:][:1]) for r in c20
            if r["defense"] == "c20"} == {(f"{chosen.value:g}",)}  # c20 is the centre at the chosen radius
    both = drops["edge"] + drops["c125"]
    return {"range": f"{min(both)}-{max(both)}%", "cost": f"{min(cost.values()):.1f}-{max(cost.values()):.1f} points",
            "radius": f"{chosen.value:g}", "priced": f"{chosen.drop:.1f}",
            "deployed": f"{-100 * rows['c20', 'pca']['natural_vs_none']:.1f}",
            "edge": "{}%, {}% and {}%".format(*drops["edge"]), "c125": "{}%, {}%\n> and {}%".format(*drops["c125"]),
            "edge_cost": f"{cost['edge']:.1f}", "c125_cost": f"{cost['c125']:.1f}",
            "plgmi": "{:.0f}% and {:.0f}%".format(*(100 * rows[d, "plgmi"]["relative_drop"] for d in ("edge", "c125")))}


def _syn_find_claims() -> dict[str, str]:
    """The README's sentence on finding the constant, from docs/results/syn-find-30ep's cells: the
    learner's FR runs, the grid's, and its pick's paired PCA top-1 and accuracy against C1's."""
    folder = ROOT / "docs" / "results" / "syn-find-30ep"
    plan = load_plan(folder / "plan.toml")
    sel = race.selection(plan)
    tp = race.test_plan(plan, {k: v["pick"] for k, v in sel.items() if v["complete"]})
    recs = read_cells(Path(tp.out_dir), set(tp.rows), set(plan.race.test_seeds))
    c1, t1 = sel["c1"]["pick"].name, sel["t1-pbt"]["pick"].name
    pca, pca_ci, _ = paired(recs, t1, c1, metric_points("pca", "top1"))
    gmi, gmi_ci, _ = paired(recs, t1, c1, metric_points("gmi", "top1"))
    acc, acc_ci, _ = paired(recs, t1, c1, natural_points)
    assert pca + pca_ci < 0 and gmi - gmi_ci < 0 < gmi + gmi_ci  # below under PCA, level under GMI
    learned = json.loads((folder / "learned" / "t1-pbt.json").read_text())
    return {"runs": f"{learned['fr_runs']:g}", "grid": f"{sel['c1']['fr_runs']:g}", "pca": f"{-pca:.1f} ± {pca_ci:.1f}",
            "cost": f"{-acc:.1f} ± {acc_ci:.1f}"}


def test_readme_headline_is_what_the_committed_cells_give() -> None:
    """Every figure of the README's headline: its table (accuracy change, paired change with its
    interval, relative drop, met or not, per attack, for each CFP row it names) and its prose (the
    protecting rows' drops and costs, the learned policy no better than its fixed start, the
    calibration's price against the chosen radius's cost on the test split) is recomputed from the
    committed cells; the fixed row's command is the one its cells were trained with."""
    text = _section("README.md", "## What it finds")
    table = _table(text)
    rows = _rows("cfp-label-follow-60ep")
    names = [re.match(r"`([^`]+)`", cells[0]).group(1) for cells in table]
    assert names == ["c125", "edge", "re", "mixup", "negls"]
    for defense, cells in zip(names, table):
        assert cells[1] == f"{100 * rows[defense, 'pca']['natural_vs_none']:+.1f}", defense
        for a, cell in zip(ATTACKS, cells[2:]):
            _check_attack_cell(cell, rows[defense, a], ("README", defense, a))
    # "best published": the published defense with the lowest PCA and GMI top-1 (DP-SGD's target never learned)
    published = ("re", "mixup", "hybrid", "tldmi", "negls", "mid", "bido")
    for a in ("pca", "gmi"):
        assert min(published, key=lambda d: rows[d, a]["top1"][0]) == "negls"
    assert rows["dp", "pca"]["natural_top1"][0] < 0.02
    # the learning adds nothing measurable: the fixed start meets the target where the agent does
    assert all(target_verdict(rows["c125", a])[0] == target_verdict(rows["edge", a])[0] for a in ATTACKS)
    prose = text[text.rindex("|") + 1:]
    c = _cfp_claims()
    for claim in (f"top-1 {c['range']} lower at {c['cost']}", f"priced r < {c['radius']} at\n{c['priced']} points",
                  f"it cost {c['deployed']} on test"):
        assert claim in prose, claim
    f = _syn_find_claims()
    claim = (f"PBT\nover {f['runs']} whole runs (a third of the grid's {f['grid']}) found a setting {f['pca']} points below "
             f"the grid's\npick under PCA on fresh seeds, level under GMI, at {f['cost']} points of accuracy against it")
    assert claim in prose, claim
    plan = load_plan(ROOT / "docs" / "results" / "cfp-race-60ep" / "plan.toml")
    sel = race.selection(plan)
    cfp = [f"{100 * sel[k]['pick'].top1:.1f}%" for k in ("c1", "t1-ppo", "t1-pbt")]
    claim = (f"(PCA top-1 {cfp[0]} for the\ngrid, {cfp[1]} for PPO's schedule, {cfp[2]} for PBT's constant)")
    assert claim in prose, claim
    # its test stage: PPO above C1 under GMI, and C1's cut against undefended targets
    tp = race.test_plan(plan, {k: s["pick"] for k, s in sel.items() if s["complete"]})
    test = read_cells(Path(tp.out_dir), set(tp.rows), set(plan.race.test_seeds))
    c1 = sel["c1"]["pick"].name
    m, ci, n = paired(test, "t1-ppo", c1, metric_points("gmi", "top1"))
    assert n == 5 and f"schedule {m:.1f} ± {ci:.1f} points above it under GMI" in " ".join(prose.split())
    cuts = []
    for a in ("pca", "gmi"):
        none = sum(100 * x["attacks"][a]["top1"] for x in test if x["defense"] == "none") / 5
        cuts.append(f"{-paired(test, c1, 'none', metric_points(a, 'top1'))[0] / none:.0%}")
    assert f"cut PCA and GMI top-1 by {cuts[0]} and {cuts[1]}" in " ".join(prose.split())
    cfp += [f"{m:.1f}", f"{ci:.1f}", "top-1", *cuts]
    expected = _numbers(f"top-1 {c['range']} {c['cost']} {c['radius']} {c['priced']} {c['deployed']} "
                        f"{f['runs']} {f['grid']} {f['pca']} {f['cost']} top-1 {' '.join(cfp)}")
    assert sorted(_numbers(prose)) == sorted(expected)  # no figure in the prose that is not recomputed
    # the c125 row's command in the README is what its cells were trained with
    readme = (ROOT / "README.md").read_text()
    command = readme[readme.index("veil train-fr --data cfp --n-private 100 --align --lr 3e-4 --epochs 60"):]
    command = " ".join(command[:command.index("#")].replace("\\\n", " ").split())
    train_args = {tuple(r["train_args"]) for r in _cells("cfp-label-follow-60ep", (0, 1, 2)) if r["defense"] == "c125"}
    assert len(train_args) == 1 and " ".join(next(iter(train_args))) in command


def test_the_deploy_warning_quotes_the_committed_cells() -> None:
    """docs/deploy.md's one "Read this before you deploy" states the CFP drops and costs of the
    learned policy and its fixed start, PLG-MI's, and the calibration's price against the cost on
    the test split, as the committed cells give them."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert text.count("Read this before you deploy") == 1
    assert "Read this before you deploy" not in (ROOT / "README.md").read_text()
    warning = text[text.index("> **Read this before you deploy.**"):]
    warning = warning[:warning.index("\n\n")]
    c = _cfp_claims()
    for claim in (f"by {c['edge']} at {c['edge_cost']} points", f"by {c['c125']} at {c['c125_cost']} points",
                  f"(by {c['plgmi']})", f"r < {c['radius']}, priced at {c['priced']} points, cost {c['deployed']}"):
        assert claim in warning, claim


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_in_the_docs_resolves(doc: str) -> None:
    """Relative links point at files that exist (a results folder's plan.toml included), and every
    #anchor at a heading of its document."""
    path = ROOT / doc
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), (doc, target)
        if anchor:
            assert anchor in _anchors(dest), (doc, target)


def test_the_readme_is_short_and_states_the_test_command_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 350
    assert "python -m pytest -q" in readme and ".venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    assert "veil/FaceAugment-v1" in readme and "FaceAugment-v0" not in readme


def test_every_results_folder_is_named_with_its_plan() -> None:
    """RESULTS names each committed results folder's plan file."""
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    for folder in sorted(p.name for p in (ROOT / "docs" / "results").iterdir() if p.is_dir()):
        assert f"`docs/results/{folder}/plan.toml`" in results, folder


def test_no_committed_image_is_a_reconstruction_grid() -> None:
    """Grids show private faces and stay out of the repository; docs/results holds plots only."""
    tracked = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    images = [f for f in tracked if f.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp"))]
    assert images and not [f for f in images if "grid" in Path(f).name or "reconstruction" in Path(f).name]


def _command_lines(doc: str) -> list[str]:
    """The ``veil ...`` command lines in ``doc``'s bash blocks: continuations joined, comments and
    '...' (elided options) dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            line = re.sub(r"^\.venv/bin/", "", line)
            if line.startswith("veil ") and "--help" not in line:
                out.append(" ".join(w for w in line.split() if w != "...").replace("...the command above...", ""))
    return out


@pytest.mark.parametrize("doc", ["README.md", "docs/reference.md", "docs/deploy.md", "docs/scale.md"])
def test_every_veil_command_in_the_docs_parses(doc: str) -> None:
    """Each `veil` command the user docs show is one the CLI accepts (options and their arity)."""
    import shlex

    from veil.agents.cli import build_parser

    lines = _command_lines(doc)
    assert lines or doc != "README.md"
    for line in lines:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: {line}")


def test_the_reference_plan_example_loads(tmp_path: Path) -> None:
    """docs/reference.md's example plan is one ``veil benchmark --config`` reads."""
    from veil.agents.plan import load_plan

    text = (ROOT / "docs" / "reference.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, flags=re.S).group(1)
    (tmp_path / "plan.toml").write_text(example)
    plan = load_plan(tmp_path / "plan.toml")
    assert plan.row("c125").use == "hybrid" and plan.row("c125").options["mix_radius"] == [0.125]


@pytest.mark.parametrize("section,reference", [("cfp-sota-60ep", "c125")])
def test_the_trapmid_and_loft_tables_in_results_are_what_the_committed_cells_give(section: str, reference: str) -> None:
    """RESULTS' Trap-MID / LoFt tables are, line for line, the summary and the paired-against-veil's-best
    tables that the committed cells give (every row, every attack run)."""
    plan = load_plan(ROOT / "docs" / "results" / section / "plan.toml")
    records = list(_cells(section))
    rows = [d for d in plan.rows if any(r["defense"] == d for r in records)]
    attacks = [a for a in plan.attacks.names if any(a in r["attacks"] for r in records)]
    text = _section("docs/RESULTS.md", "### Trap-MID and LoFt against veil's best (0.18)")
    expected = [line for line in (headline(summarize(records, rows, attacks), attacks)
                                  + against(records, reference, rows, attacks)).splitlines() if line.startswith("| ")]
    assert len(expected) == 2 * len(rows) + 1  # two headers, the rows twice less the reference's pairing with itself
    for line in expected:
        assert line in text, line


def _kedmi_check_lines(result: dict) -> list[str]:
    """The peer check's KEDMI table, one line per target seed and variant, from the check's JSON."""
    lines = []
    for r in result["cells"]:
        v = result["variants"][r["variant"]]
        lines.append(f"| {r['seed']} | {r['variant']} | {v['n_critic']} | {v['init_log_var']:.0f} | {100 * r['top1']:.1f}% | "
                     f"{100 * r['top5']:.1f}% | {100 * r['sink_share']:.1f}% | {100 * r['nn_pixel_acc']:.1f}% |")
    return lines


def test_the_kedmi_check_in_the_peer_check_is_what_its_committed_json_holds() -> None:
    result = json.loads((ROOT / "docs" / "results" / "cfp-sota-60ep" / "kedmi-check-none-s0.json").read_text())
    assert [r["variant"] for r in result["cells"]] == ["veil", "authors-log-var", "authors-n-critic", "authors-both"]
    cell = json.loads((ROOT / "docs" / "results" / "cfp-sota-60ep" / "cells" / "none-s0.json").read_text())
    assert result["cells"][0]["top1"] == cell["attacks"]["kedmi"]["top1"]  # veil's variant is the cell's attack
    assert result["judge"] == cell["attacks"]["kedmi"]["evaluator"]
    text = _section("docs/attacks-peer-check.md", "## Open items")
    for line in _kedmi_check_lines(result):
        assert line in text, line
