"""Deploying what the game trained: ``veil train-agent`` saves its own FR model as a target
(``<run>-game-fr.pt``) that ``veil attack`` scores, and a benchmark's ``use = "target"`` row scores
a given checkpoint instead of training one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import benchmark, tracking
from veil.agents.attack_cli import load_target
from veil.agents.cli import main
from veil.agents.plan import load_plan
from veil.attacks.harness import target_accuracy
from veil.recognition import load_faces, split_identities

AGENT_TINY = ["--synthetic-identities", "8", "--synthetic-images", "12", "--image-size", "32", "--batch-size", "16",
              "--episode-steps", "32", "--threads", "2", "--val-every", "16"]
FR_TINY = ["train-fr", "--data", "synthetic", "--synthetic-images", "8", "--image-size", "32", "--batch-size", "16",
           "--epochs", "1", "--threads", "2"]
ATTACK = ["--attack", "pca", "--steps", "10", "--restarts", "1", "--attack-seeds", "1", "--eval-arch", "cnn",
          "--eval-epochs", "1", "--threads", "2"]

PLAN = """
rows = ["given"]
seeds = [0]
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
[defenses.given]
use = "target"
"""


def write_plan(tmp_path: Path, target: str) -> Path:
    (tmp_path / "bench").mkdir(exist_ok=True)
    path = tmp_path / "bench" / "plan.toml"
    path.write_text(PLAN + f"target = {target}\n")
    return path


def train_fr(tmp_path: Path, name: str, identities: int = 8) -> Path:
    ckpt = tmp_path / "targets" / name
    assert main([*FR_TINY, "--synthetic-identities", str(identities), "--checkpoint", str(ckpt)]) == 0
    return ckpt


def test_the_game_saves_its_fr_model_as_a_target_that_veil_attack_scores(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *AGENT_TINY, "--timesteps", "32", "--n-steps", "32", "--log-every", "32"]) == 0
    (path,) = (tmp_path / "checkpoints").glob("*-game-fr.pt")
    assert f"FR model of the game: {path.relative_to(tmp_path)}" in capsys.readouterr().out
    run_id = path.name.removesuffix("-game-fr.pt")
    extra = torch.load(path, weights_only=True)["extra"]
    assert extra["mlflow_run_id"] == run_id and extra["model_config"]["num_classes"] == 4
    assert (extra["data"]["synthetic_identities"], extra["split"]["seed"], extra["val_fraction"]) == (8, 0, 0.15)
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    assert [a.path for a in MlflowClient().list_artifacts(run_id, "game_target")] == [f"game_target/{path.name}"]
    model, found, _ = load_target(run_id)  # a run ID finds it too
    assert found == run_id and model(torch.rand(2, 3, 32, 32))["logits"].shape == (2, 4)
    # it is the target a plan of the same data would score (its data and split records agree)
    plan = load_plan(write_plan(tmp_path, json.dumps(str(path))))
    plan = replace(plan, data=replace(plan.data, synthetic_images=12))
    split = split_identities(load_faces(plan.data), plan.split)
    benchmark.check_given_target(path, plan, split)
    assert main(["attack", "--model", str(path), *ATTACK]) == 0
    assert "pca: attack top-1" in capsys.readouterr().out


def test_a_target_row_scores_the_given_checkpoint_instead_of_training_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    given = train_fr(tmp_path, "t0.pt")
    plan = write_plan(tmp_path, '{ 0 = "../targets/t0.pt" }')
    assert main(["benchmark", "--config", str(plan)]) == 0
    cell_file, copy = tmp_path / "bench" / "cells" / "given-s0.json", tmp_path / "bench" / "checkpoints" / "given-s0.pt"
    cell = json.loads(cell_file.read_text())
    split = split_identities(load_faces(load_plan(plan).data), load_plan(plan).split)
    assert cell["natural_top1"] == target_accuracy(load_target(str(given))[0], split)["top1"]
    assert Path(cell["target"]).resolve() == given.resolve() and cell["options"] == {}
    assert 0.0 <= cell["attacks"]["pca"]["top1"] <= 1.0
    assert copy.read_bytes() == given.read_bytes()
    # a rerun attacks the cell's copy as a trained cell's target (the game's epoch count is no sign
    # of an interrupted training), and a lost copy is taken again from the file
    for lose_copy in (False, True):
        cell_file.write_text(json.dumps({**cell, "attacks": {}}))
        if lose_copy:
            copy.unlink()
        assert main(["benchmark", "--config", str(plan)]) == 0
        assert json.loads(cell_file.read_text())["attacks"]["pca"]["top1"] == cell["attacks"]["pca"]["top1"]
        assert copy.is_file() and not list(copy.parent.glob("*.partial.pt"))


def test_a_missing_or_mismatched_target_is_a_one_line_error_naming_the_file(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--config", str(write_plan(tmp_path, '"../targets/none.pt"'))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "bench" / ".." / "targets" / "none.pt") in err
    other = train_fr(tmp_path, "six.pt", identities=6)  # 3 private identities; the plan's split has 4
    capsys.readouterr()
    assert main(["benchmark", "--config", str(write_plan(tmp_path, '"../targets/six.pt"'))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "six.pt" in err and "data.synthetic_identities: 6 -> 8" in err
    state = torch.load(other, weights_only=True)
    del state["extra"]["job"]  # no record of its data: the class count still tells
    torch.save(state, tmp_path / "targets" / "bare.pt")
    assert main(["benchmark", "--config", str(write_plan(tmp_path, '"../targets/bare.pt"'))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bare.pt has 3 classes" in err
    assert not (tmp_path / "bench" / "cells").exists()  # nothing ran


@pytest.mark.parametrize("table, message", [
    ('use = "target"\n', "names its checkpoints"),
    ('use = "re"\ntarget = "t.pt"\n', "names its checkpoints"),
    ('use = "target"\ntarget = "t.pt"\nre_p = 0.5\n', "takes no train-fr options"),
    ('use = "target"\ntarget = 3\n', "target must be a file name"),
])
def test_only_a_target_row_names_targets_and_it_takes_no_options(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(f"[defenses.x]\n{table}")
    with pytest.raises(ValueError, match=message) as err:
        load_plan(path)
    assert str(path) in str(err.value)
