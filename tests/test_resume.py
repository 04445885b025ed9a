"""``veil train-fr --resume``: only the run a checkpoint was written for, a schedule stretched to
the new length, and never a diverged epoch over the last good checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import main
from veil.agents.train_fr import first_difference

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "2"]


@pytest.fixture
def ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ck.pt"
    assert main(["train-fr", *TINY, "--epochs", "2", "--checkpoint", str(path)]) == 0
    return path


def _lr_history() -> list[float]:
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    return [m.value for m in sorted(MlflowClient().get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]


@pytest.mark.parametrize("change, difference", [
    (["--synthetic-identities", "10"], "data.synthetic_identities: 8 -> 10"),
    (["--lr", "0.5"], "train.lr: 0.001 -> 0.5"),
    (["--defense", "negls"], "defense.names: 'none' -> 'negls'"),
    (["--n-private", "3"], "split.n_private: None -> 3"),
])
def test_a_resume_with_other_options_names_the_first_difference(ckpt: Path, capsys: pytest.CaptureFixture,
                                                                 change: list[str], difference: str) -> None:
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(["train-fr", *TINY, *change, "--epochs", "3", "--resume", str(ckpt), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert difference in err and "--force" in err and "Traceback" not in err
    assert ckpt.read_bytes() == before  # nothing trained, nothing overwritten


def test_force_resumes_with_other_options_and_says_so(ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train-fr", *TINY, "--lr", "0.0005", "--epochs", "3", "--resume", str(ckpt), "--force",
                 "--checkpoint", str(ckpt)]) == 0
    assert "warning: resuming" in capsys.readouterr().out
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3


def test_added_epochs_train_on_the_schedule_stretched_to_the_new_total(ckpt: Path) -> None:
    assert main(["train-fr", *TINY, "--epochs", "4", "--resume", str(ckpt)]) == 0
    lr = _lr_history()  # one step per epoch (16 images, batch 16): cosine over 2 steps, then over 4

    def cosine(t: float) -> float:
        return 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    assert lr[:2] == pytest.approx([cosine(0 / 2), cosine(1 / 2)])  # the first run's own schedule
    assert lr[2:] == pytest.approx([cosine(2 / 4), cosine(3 / 4)])  # resumed: the 4-epoch schedule from step 2
    assert lr[2] > 10 * cosine(1.0)  # not the 1% floor (1e-5) the 2-epoch schedule had reached by step 2


def test_a_diverging_resume_keeps_the_last_good_checkpoint(ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    before = ckpt.read_bytes()
    capsys.readouterr()
    rc = main(["train-fr", *TINY, "--lr", "1e30", "--epochs", "3", "--resume", str(ckpt), "--force",
               "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and "diverged" in err and "Traceback" not in err
    assert ckpt.read_bytes() == before
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name("veil").experiment_id])
    assert run.info.status == "FAILED"


def test_first_difference_walks_nested_records_in_order() -> None:
    stored = {"data": {"source": "att", "size": 64}, "train": {"lr": 1e-3}}
    assert first_difference(stored, {"data": {"source": "att", "size": 32}, "train": {"lr": 0.1}}) == \
        "data.size: 64 -> 32"
    assert first_difference(stored, stored) is None
    assert first_difference({"band": (0.0, 0.5)}, {"band": [0.0, 0.25]}) == "band[1]: 0.5 -> 0.25"
