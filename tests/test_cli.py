"""The `veil` CLI end to end on tiny configs: what lands in the MLflow run, resume, failures."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import tracking
from veil.agents.cli import build_parser, main

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "2"]


def _runs() -> list:
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    exp = mlflow.get_experiment_by_name("veil")
    return MlflowClient().search_runs([exp.experiment_id]) if exp else []


def _artifacts(run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in MlflowClient().list_artifacts(run_id, path):
        out |= _artifacts(run_id, item.path) if item.is_dir else {item.path}
    return out


def test_train_fr_logs_params_metrics_artifacts_and_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", *TINY, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "veil ui" in out and "private test top-1" in out
    (run,) = _runs()
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model.name"] == "cnn" and p["split.n_private_identities"] == "4"
    assert p["split.n_private_train"] == "16" and p["split.n_private_test"] == "8"  # 6 images -> 4 / 2
    history = MlflowClient().get_metric_history(run.info.run_id, "test_top1")
    assert [m.step for m in history] == [1, 2]
    assert 0.0 <= run.data.metrics["final_test_top1"] <= 1.0
    arts = _artifacts(run.info.run_id)
    assert {"split.json", "samples/private_train.png", "samples/public.png"} <= arts
    assert any(a.startswith("checkpoint/") for a in arts)
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == run.info.run_id
    served = mlflow.pytorch.load_model(models[0].model_uri)
    assert served(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_train_fr_weights_follow_the_seed_not_what_the_process_drew_before(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    weights = []
    for i, draws in enumerate((0, 1000)):
        torch.rand(draws)  # the benchmark trains cells one after another in one process
        assert main(["train-fr", *TINY, "--epochs", "1", "--seed", "3", "--checkpoint", str(tmp_path / f"{i}.pt")]) == 0
        weights.append(torch.load(tmp_path / f"{i}.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_continues_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ck.pt"
    assert main(["train-fr", *TINY, "--epochs", "1", "--checkpoint", str(ckpt)]) == 0
    assert main(["train-fr", *TINY, "--epochs", "2", "--resume", str(ckpt)]) == 0
    (run,) = _runs()
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "test_top1")]
    assert steps == [1, 2]


def test_an_interrupted_run_leaves_a_checkpoint_that_resumes_its_run_and_can_be_attacked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veil.agents.attack_cli import load_target

    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ck.pt"
    real = tracking.log_metrics

    def stop_after_epoch_1(metrics, step=None):
        real(metrics, step=step)
        if step == 1 and "train_loss" in metrics:
            raise ValueError("machine went away")  # after epoch 1's checkpoint, before epoch 2

    monkeypatch.setattr(tracking, "log_metrics", stop_after_epoch_1)
    assert main(["train-fr", *TINY, "--epochs", "2", "--checkpoint", str(ckpt)]) == 2
    monkeypatch.setattr(tracking, "log_metrics", real)
    model, _, _ = load_target(str(ckpt))  # the epoch checkpoint carries the model config
    assert isinstance(model, torch.nn.Module)
    (failed,) = _runs()
    assert torch.load(ckpt, weights_only=True)["extra"]["mlflow_run_id"] == failed.info.run_id
    assert main(["train-fr", *TINY, "--epochs", "2", "--resume", str(ckpt)]) == 0
    (run,) = _runs()  # resumed into the same run, not a new one
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "test_top1")] == [1, 2]


def test_the_checkpoint_is_written_once_per_epoch_and_once_by_a_resume_with_no_epoch_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veil.agents.attack_cli import load_target
    from veil.recognition.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    ckpt, writes = tmp_path / "ck.pt", []
    real = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self, path, extra=None: (writes.append(self.epoch),
                                                                                    real(self, path, extra))[1])
    assert main(["train-fr", *TINY, "--epochs", "2", "--checkpoint", str(ckpt)]) == 0
    assert writes == [1, 2]  # fit's epoch ends; no second write of epoch 2's state after it
    writes.clear()
    assert main(["train-fr", *TINY, "--epochs", "2", "--resume", str(ckpt)]) == 0
    assert writes == [2]  # nothing left to train: the final checkpoint is still written, with its extra
    assert torch.load(ckpt, weights_only=True)["extra"]["model_config"]["name"] == "cnn"
    assert isinstance(load_target(str(ckpt))[0], torch.nn.Module)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ck.pt"
    assert main(["train-fr", *TINY, "--epochs", "1", "--checkpoint", str(ckpt)]) == 0
    assert main(["train-fr", *TINY, "--model", "resnet18", "--epochs", "2", "--resume", str(ckpt)]) == 2
    assert "written for another model" in capsys.readouterr().err


def test_failure_inside_training_marks_the_run_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)

    def diverge(self: object, images: torch.Tensor, targets: torch.Tensor) -> None:
        raise FloatingPointError("non-finite loss nan at step 0")

    monkeypatch.setattr("veil.recognition.trainer.Trainer.step", diverge)
    assert main(["train-fr", *TINY, "--epochs", "1"]) == 2
    assert "non-finite loss" in capsys.readouterr().err
    (run,) = _runs()
    assert run.info.status == "FAILED"


def test_data_path_without_identities_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["train-fr", "--data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no identities found" in err and str(tmp_path / "empty") in err


def test_help_explains_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("train-fr", "train-agent", "demo", "ui"):
        for action in sub[name]._actions:
            if action.dest != "help":
                assert action.help, f"{name} option {action.option_strings} has no help"


def _commands() -> list[str]:
    return ["", *next(a for a in build_parser()._actions if a.dest == "command").choices]


@pytest.mark.parametrize("command", _commands())
def test_no_line_of_a_commands_help_is_wider_than_100_columns(command: str, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps option help to the terminal; descriptions are ours
    assert main([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    wide = [line for line in out.splitlines() if len(line) > 100]
    assert out.startswith("usage: veil") and wide == []


def test_ui_serves_veils_store_on_localhost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr("veil.agents.ui.serve", lambda cmd, env: calls.append((cmd, env)) or 0)
    assert main(["ui", "--port", "5077"]) == 0
    cmd, env = calls[0]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--workers") + 1] == "1"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_train_fr_with_a_defense_logs_its_params_and_augmented_samples(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", *TINY, "--epochs", "1", "--defense", "hybrid", "--mix-k", "2",
                 "--mix-label-follow", "0.25", "--mix-p", "0.5"]) == 0
    (run,) = _runs()
    p = run.data.params
    assert p["defense.names"] == "re,mixup" and p["defense.mixup.k"] == "2" and p["defense.re.p"] == "1.0"
    assert p["defense.mixup.label_follow"] == "0.25" and p["defense.mixup.p"] == "0.5"
    assert run.data.tags["veil.defense"] == "re,mixup"
    assert "samples/augmented.png" in _artifacts(run.info.run_id)


def test_unknown_defense_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", *TINY, "--defense", "re,blur"]) == 2
    assert "unknown defense 'blur'" in capsys.readouterr().err


def test_a_label_follow_outside_zero_one_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", *TINY, "--defense", "mixup", "--mix-label-follow", "2"]) == 2
    assert "label_follow must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_commands_started_together_on_a_fresh_store_all_get_it(tmp_path: Path) -> None:
    # without the lock, 4 of 6 such processes died in MLflow's first-use migration here
    import subprocess
    import sys

    code = (f"from veil.agents import tracking; "
            f"print(tracking.setup('sqlite:///{tmp_path}/fresh.db', 'race'))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-400:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, found by all three
