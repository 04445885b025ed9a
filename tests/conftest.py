"""Shared fixtures: an isolated data cache and MLflow store per test, seeded torch, 2 threads,
and the shared face data (tests that need it skip with a reason when ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from veil.recognition.data import default_data_root


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VEIL_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("VEIL_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    torch.set_num_threads(2)


def _shared(name: str) -> Path:
    path = default_data_root() / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the shared face data (../shared/datasets or $VEIL_DATA_ROOT) is needed")
    return path


@pytest.fixture
def att_root() -> Path:
    return _shared("att_faces")


@pytest.fixture
def cfp_root() -> Path:
    return _shared("cfp")
