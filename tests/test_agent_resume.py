"""``veil train-agent --resume``: a game interrupted after a checkpoint continues to the very policy
an uninterrupted run exports (one thread, PPO)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from veil.agents import tracking
from veil.agents.cli import main
from veil.env.face_augment import FaceAugmentEnv

GAME = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--batch-size", "16", "--timesteps", "96", "--n-steps", "16", "--n-epochs", "2", "--checkpoint-every", "16",
        "--eval-every", "1024", "--log-every", "16", "--episode-steps", "48", "--threads", "1", "--seed", "0"]


class Crash(Exception):
    """Stands in for a kill: the process is gone, only what it wrote to disk is left."""


def _policy(out: Path) -> dict[str, torch.Tensor]:
    (path,) = out.glob("*-policy.safetensors")
    return load_file(str(path))


def test_a_game_resumed_from_its_checkpoint_exports_the_uninterrupted_policy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-agent", *GAME, "--out-dir", str(tmp_path / "ref")]) == 0
    reference = _policy(tmp_path / "ref")

    step = FaceAugmentEnv.step

    def crash_at_40(self, action):  # after the checkpoint of step 32, before an episode's end (48)
        if self.total_steps == 40:
            raise Crash()
        return step(self, action)

    out = tmp_path / "run"
    monkeypatch.setattr(FaceAugmentEnv, "step", crash_at_40)
    with pytest.raises(Crash):
        main(["train-agent", *GAME, "--out-dir", str(out)])
    monkeypatch.setattr(FaceAugmentEnv, "step", step)
    (game,) = out.glob("*-game.pt")
    assert torch.load(game, weights_only=True)["num_timesteps"] == 32
    run_id = game.name.removesuffix("-game.pt")
    capsys.readouterr()
    assert main(["train-agent", "--resume", run_id, "--out-dir", str(out), "--threads", "1"]) == 0
    assert f"resuming run {run_id} at step 32 of 96" in capsys.readouterr().out
    resumed = _policy(out)
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    mlflow.set_tracking_uri(tracking.default_tracking_uri())
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_a_missing_or_foreign_game_checkpoint_is_a_one_line_error(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["train-agent", "--resume", "nosuchrun", "--out-dir", str(tmp_path)]) == 2
    assert "no game checkpoint" in capsys.readouterr().err
    bad = tmp_path / "x-game.pt"
    torch.save({"format": "something else"}, bad)
    assert main(["train-agent", "--resume", str(bad)]) == 2
    assert "not a veil game checkpoint" in capsys.readouterr().err
