"""`veil attack` end to end on a tiny target: reports on disk and in MLflow, nested under the
target's training run, with the evaluation model logged once and reused from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import main

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--threads", "2"]
ATTACK = ["--attack", "pca", "--steps", "10", "--restarts", "1", "--attack-seeds", "2", "--eval-arch", "cnn",
          "--eval-epochs", "2", "--threads", "2"]


def _runs() -> list:
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    exp = mlflow.get_experiment_by_name("veil")
    return MlflowClient().search_runs([exp.experiment_id]) if exp else []


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", *TINY, "--batch-size", "16", "--epochs", "2"]) == 0
    (run,) = _runs()
    return run.info.run_id


def test_attack_on_a_run_id_nests_a_report_under_the_training_run(trained: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["attack", "--model", trained, *ATTACK]) == 0
    out = capsys.readouterr().out
    assert "| pca |" in out and "attack top-1" in out
    runs = {r.info.run_name: r for r in _runs()}
    child = runs["attack-pca-fr-cnn-synthetic"]
    assert child.data.tags["mlflow.parentRunId"] == trained
    assert 0.0 <= child.data.metrics["attack.top1"] <= 1.0 and "attack.top1_std" in child.data.metrics
    assert runs["eval-model-cnn"].data.tags["veil.kind"] == "eval-model"
    arts = {a.path for a in MlflowClient().list_artifacts(child.info.run_id, "report")}
    assert arts == {"report/report.json", "report/report.md", "report/reconstructions.png", "report/exposed.png",
                    "report/reconstructions.safetensors"}
    report = json.loads((tmp_path / "reports" / child.info.run_id / "report.json").read_text())
    assert report["attack"] == "pca" and len(report["per_seed"]) == 2 and len(report["classes"]) == 4


def test_attack_on_the_checkpoint_file_nests_under_its_run_and_reuses_the_eval_model(
        trained: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["attack", "--model", trained, *ATTACK]) == 0
    (ckpt,) = (tmp_path / "checkpoints").glob("*.pt")
    assert main(["attack", "--model", str(ckpt), *ATTACK]) == 0
    assert "(cached)" in capsys.readouterr().out
    runs = _runs()
    assert sum(r.info.run_name == "eval-model-cnn" for r in runs) == 1
    children = [r for r in runs if r.info.run_name == "attack-pca-fr-cnn-synthetic"]
    assert len(children) == 2 and all(r.data.tags["mlflow.parentRunId"] == trained for r in children)


def test_unknown_attack_and_missing_model_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["attack", "--model", "x", "--attack", "nope"]) == 2
    assert "unknown attack" in capsys.readouterr().err
    assert main(["attack", "--model", "no-such-run"]) == 2
    assert "neither a file nor a run ID" in capsys.readouterr().err
