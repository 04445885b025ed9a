"""A bad option value is a one-line error naming it, before anything trains, never a traceback
or a silently wrong run."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.agents.cli import main

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "2"]


@pytest.mark.parametrize("argv, message", [
    (["train-fr", "--defense", "dp", "--dp-epsilon", "nan"], "DP epsilon must be a number > 0, got nan"),
    (["train-fr", "--defense", "dp", "--dp-clip", "nan"], "max_grad_norm > 0"),
    (["train-fr", "--defense", "dp", "--dp-epsilon", "0", "--dp-noise", "nan"], "noise_multiplier >= 0"),
    (["train-fr", "--defense", "mixup", "--mix-k", "9"], "--mix-k must be 1-6"),
    (["train-fr", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["train-fr", "--defense", "mid", "--mid-beta", "nan"], "MID needs beta >= 0"),
    (["train-fr", "--lr", "1e40"], "lr must be a positive number below"),
    (["train-fr", "--lr", "nan"], "lr must be a positive number below"),
    (["train-agent", "--timesteps", "-5"], "argument --timesteps: must be >= 1, got -5"),
    (["train-agent", "--n-steps", "0"], "argument --n-steps: must be >= 1, got 0"),
    (["train-agent", "--policy-lr", "nan"], "--policy-lr must be a number > 0"),
])
def test_a_bad_value_is_a_one_line_error_before_any_run(argv: list[str], message: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv, *TINY]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"veil {argv[0]}: error: ")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "checkpoints").exists()  # no run was made


@pytest.mark.parametrize("argv, message", [
    (["train-fr", "--epochs", "-1"], "argument --epochs: must be >= 1, got -1"),
    (["train-fr", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["train-agent", "--timesteps", "-3"], "argument --timesteps: must be >= 1, got -3"),
    (["train-agent", "--probe-every", "-1"], "argument --probe-every: must be >= 0, got -1"),
    (["attack", "--model", "x", "--attack-seeds", "0"], "argument --attack-seeds: must be >= 1, got 0"),
    (["train-fr", "--synthetic-images", "2.5"], "argument --synthetic-images: must be a whole number >= 1, got '2.5'"),
    (["train-fr", "--tracking-uri", "file:///tmp/runs"], "argument --tracking-uri: 'file:///tmp/runs' is a folder "
                                                         "store, which MLflow 3 no longer writes to"),
    (["train-fr", "--tracking-uri", "./runs"], "argument --tracking-uri: './runs' is a folder store"),
])
def test_an_impossible_count_is_refused_while_parsing_before_data_loads(argv: list[str], message: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = []
    for module in ("train_fr", "train_agent", "attack_cli"):
        monkeypatch.setattr(f"veil.agents.{module}.load_faces", lambda *a, **k: loaded.append(a))
    assert main([*argv, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"veil {argv[0]}: error: {message}") and err.endswith(f"(see veil {argv[0]} --help)\n")
    assert err.count("\n") == 1
    assert loaded == []
