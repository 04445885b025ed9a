"""Experiment plans: a TOML file is the experiment; flags override it; every committed results
section rebuilds its tables from its own plan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from veil.agents import benchmark, calibrate
from veil.agents.cli import main
from veil.agents.options import parse_command
from veil.agents.plan import Plan, load_plan

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = sorted(p.parent.name for p in (ROOT / "docs" / "results").glob("*/plan.toml")
                  if "\n[race]" not in p.read_text()  # a race rebuilds with veil race (tests/test_race.py)
                  and (p.parent / "cells").is_dir())  # a plan not run yet has no tables to rebuild
PLANNED = sorted(p.parent.name for p in (ROOT / "docs" / "results").glob("*/plan.toml")
                 if not (p.parent / "cells").is_dir())

PLAN = """
rows = ["none", "c125", "edge"]
seeds = [0, 1]
out_dir = "runs/cfp"
[data]
source = "cfp"
align = true
[split]
n_private = 100
[budget]
epochs = 60
lr = 3e-4
[attacks]
names = ["pca", "gmi"]
identities = 20
gan_steps = 300
[defenses.c125]
use = "hybrid"
mix_label_follow = 0
mix_radius = [0.125]
re_area = [0.065, 0.26]
[defenses.edge]
use = "policy"
policy = { 0 = "policies/e0.safetensors", 1 = "policies/e1.safetensors" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp" / "plan.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_a_plan_file_loads_into_typed_configs_with_paths_from_its_folder(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, PLAN))
    assert (plan.data.source, plan.data.align, plan.split.n_private) == ("cfp", True, 100)
    assert (plan.budget.epochs, plan.budget.lr, plan.budget.batch_size) == (60, 3e-4, 32)  # unset: train-fr's
    assert (plan.attacks.names, plan.attacks.identities, plan.attacks.gan_steps) == (["pca", "gmi"], 20, 300)
    assert plan.defenses["c125"].options == {"mix_label_follow": 0.0, "mix_radius": [0.125], "re_area": [0.065, 0.26]}
    assert plan.out_dir == str(tmp_path / "exp" / "runs" / "cfp")
    assert plan.policy_for_seed(1, "edge") == str(tmp_path / "exp" / "policies" / "e1.safetensors")


def test_a_named_defense_trains_with_its_options() -> None:
    job = benchmark.cell_job(load_plan(ROOT / "docs/results/cfp-label-follow-60ep/plan.toml"), "c125", 2,
                             benchmark.Tracking())
    assert job.defense.names == ("re", "mixup")
    assert (job.defense.mix.band, job.defense.mix.label_follow, job.defense.mix.k) == ((0.0, 0.125), 0.0, 4)
    assert (job.train.epochs, job.train.lr, job.train.seed, job.data.source, job.split.n_private) == \
        (60, 3e-4, 2, "cfp", 100)


@pytest.mark.parametrize("edit, message", [
    ("rows = [\"none\"]\nepoch = 3\n", "unknown key 'epoch'"),
    ("[data]\nsource = \"att\"\nsize = 64\n", "unknown key 'size'"),
    ("[budget]\nepochs = 3\nrate = 0.1\n", "unknown key 'rate'"),
    ("[attacks]\nnames = [\"pca\"]\ngan_step = 3\n", "unknown key 'gan_step'"),
    ("[defenses.x]\nuse = \"mixup\"\nmix_radus = [0.1]\n", "unknown option 'mix_radus'"),
])
def test_an_unknown_key_anywhere_is_an_error_naming_the_key_and_the_file(tmp_path: Path, edit: str,
                                                                          message: str) -> None:
    path = write(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as err:
        load_plan(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("edit, message", [
    ("[budget]\nepochs = \"60\"\n", "epochs must be an integer"),
    ("[budget]\nepochs = 2.5\n", "epochs must be an integer"),
    ("[data]\nalign = 1\n", "align must be true or false"),
    ("[defenses.x]\nuse = \"mixup\"\nmix_k = 4.5\n", "mix_k: 4.5 is not a valid int"),
    ("[defenses.x]\nuse = \"re\"\nre_area = [0.1]\n", "re_area takes 2 values"),
    ("[defenses.x]\nuse = \"mixup\"\nmix_band = \"middle\"\n", "is not one of low, high, band"),
    ("[defenses.x]\nuse = \"jpeg\"\n", "unknown defense 'jpeg'"),
    ("[defenses.x]\nmix_k = 2\n", "needs use ="),
    ("rows = [\"none\"\n", "not a TOML plan"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_it(tmp_path: Path, edit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_plan(write(tmp_path, edit))


def test_flags_override_the_file_and_only_the_flags_given(tmp_path: Path) -> None:
    path = write(tmp_path, PLAN)
    argv = ["benchmark", "--config", str(path), "--epochs", "30", "--seeds", "3", "--data", "att"]
    args = parse_command(benchmark.add_parser, argv)
    plan = benchmark.plan_from_args(args, benchmark.add_parser)
    assert (plan.budget.epochs, plan.seeds, plan.data.source) == (30, [3], "att")  # 30 is also the flag's default
    assert (plan.budget.lr, plan.data.align, plan.attacks.names, plan.rows) == (3e-4, True, ["pca", "gmi"],
                                                                              ["none", "c125", "edge"])


def test_a_calibration_plan_runs_as_none_and_one_row_per_value_on_the_validation_split(tmp_path: Path) -> None:
    path = write(tmp_path, "[calibrate]\nparam = \"radius\"\nvalues = [0.05, 0.1]\n")
    argv = ["benchmark", "--config", str(path)]
    args = parse_command(benchmark.add_parser, argv)
    plan = benchmark.plan_from_args(args, benchmark.add_parser)
    assert plan.rows == ["none", "cal-radius-0.05", "cal-radius-0.1"] and plan.split.validation
    assert plan.defenses["cal-radius-0.1"].options["mix_radius"] == [0.1]
    argv = ["calibrate", "--config", str(path), "--budget", "1.5"]
    args = parse_command(calibrate.add_parser, argv)
    c = calibrate.plan_from_args(args).calibrate
    assert (c.param, c.values, c.budget, c.fix) == ("radius", [0.05, 0.1], 1.5, {"label_follow": 0.0, "high_band": 0.0})


def test_a_bad_plan_is_a_one_line_error_of_the_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, "[budget]\nepoch = 3\n")
    assert main(["benchmark", "--config", str(path), "--summarize-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'epoch'" in err and str(path) in err
    assert main(["benchmark", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no plan file" in capsys.readouterr().err


@pytest.mark.parametrize("section", PLANNED)
def test_a_plan_not_run_yet_loads_and_names_every_row(section: str) -> None:
    plan = load_plan(ROOT / "docs" / "results" / section / "plan.toml")
    assert plan.rows and all(plan.row(name).use for name in plan.row_names())


def test_every_results_section_has_a_plan() -> None:
    folders = sorted(p.name for p in (ROOT / "docs" / "results").iterdir() if (p / "cells").is_dir())
    assert SECTIONS == folders and len(SECTIONS) == 13


@pytest.mark.parametrize("section", SECTIONS)
def test_each_committed_section_rebuilds_its_tables_from_its_plan(section: str, tmp_path: Path) -> None:
    """``veil benchmark --config docs/results/<section>/plan.toml --summarize-only`` (and ``veil
    calibrate`` for a calibration) writes exactly the committed tables, from the committed cells."""
    src = ROOT / "docs" / "results" / section
    copy = tmp_path / section
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("*.png", "*.md", "*.csv", "*.json", "policies"))
    shutil.copytree(src / "cells", copy / "cells", dirs_exist_ok=True)
    assert main(["benchmark", "--config", str(copy / "plan.toml"), "--summarize-only"]) == 0
    rebuilt = ["results.md", "results.csv"]
    if (src / "calibration.md").is_file():
        assert main(["calibrate", "--config", str(copy / "plan.toml"), "--summarize-only"]) == 0
        rebuilt += ["calibration.md", "calibration.json"]
    for name in rebuilt:
        assert (copy / name).read_text() == (src / name).read_text(), name


def test_plan_defaults_are_the_commands_defaults() -> None:
    args = parse_command(benchmark.add_parser, ["benchmark"])
    plan = Plan()
    assert (args.epochs, args.batch_size, args.lr, args.model) == (plan.budget.epochs, plan.budget.batch_size,
                                                                   plan.budget.lr, plan.budget.model)
    assert args.defenses.split(",") == plan.rows and args.attacks.split(",") == plan.attacks.names


REALISTIC = ROOT / "docs" / "plans" / "realistic-protocol.toml"


def test_the_realistic_protocol_plan_loads_as_documented() -> None:
    plan = load_plan(REALISTIC)
    assert (plan.split.n_private, plan.data.image_size, plan.data.max_identities) == (1000, 112, 2000)
    assert (plan.budget.model, Path(plan.budget.weights).name) == ("resnet18", "resnet18-f37072fd.pth")
    judge = (plan.attacks.eval_arch, Path(plan.attacks.eval_weights).name)
    assert judge == ("inception", "20180402-114759-vggface2.pt")
    job = benchmark.cell_job(plan, "c125", 0, benchmark.Tracking())
    assert (job.model, job.weights, job.defense.names) == ("resnet18", plan.budget.weights, ("re", "mixup"))


def test_the_realistic_protocol_fails_only_on_its_placeholder_data_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--config", str(REALISTIC), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "veil benchmark: error: data path /data/casia-webface does not exist"


def test_weights_flags_override_the_plans_files(tmp_path: Path) -> None:
    argv = ["benchmark", "--config", str(REALISTIC), "--weights", "mine.pth", "--eval-weights", "judge.pt",
            "--eval-arch", "resnet18"]
    plan = benchmark.plan_from_args(parse_command(benchmark.add_parser, argv), benchmark.add_parser)
    assert (plan.budget.weights, plan.attacks.eval_weights, plan.attacks.eval_arch) == ("mine.pth", "judge.pt",
                                                                                        "resnet18")
    assert plan.split.n_private == 1000  # the rest stays the plan's
