"""Files veil reads may come from someone else: none of them can run code, and a bad one is a
one-line error naming it."""

from __future__ import annotations

from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from torch import nn

from veil.agents.attack_cli import load_target
from veil.agents.cli import main
from veil.recognition import ModelConfig, build_model
from veil.recognition.models import LogitsOnly

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "8", "--image-size", "32",
        "--threads", "2"]


def one_line_error(stderr: str, command: str) -> bool:
    """What a bad input must give: no traceback, and one line saying what was wrong (MLflow's
    own log lines, e.g. a fresh store being created, may come before it)."""
    veil = [line for line in stderr.splitlines() if line.startswith(f"veil {command}: error: ")]
    return "Traceback" not in stderr and len(veil) == 1


class Payload:
    """Unpickling this writes a marker file: what a crafted model folder would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


class Booby(nn.Module):
    """A model that carries the payload as an attribute, so pickling the model pickles it."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.net = build_model(ModelConfig(num_classes=4, image_size=32))
        self.payload = Payload(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["logits"]


def test_an_mlflow_model_folder_saved_with_pickle_is_refused_unopened(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    marker, folder = tmp_path / "pwned", tmp_path / "model"
    mlflow.pytorch.save_model(Booby(marker), str(folder), serialization_format="pickle")
    marker.unlink(missing_ok=True)  # MLflow's own save may unpickle what it wrote (a check of its own)
    capsys.readouterr()
    assert main(["attack", "--model", str(folder), *TINY, "--attack", "pca", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()  # the payload never ran
    assert one_line_error(err, "attack") and str(folder) in err and "pickle" in err


def test_an_mlflow_model_folder_veil_logged_still_loads_as_weights(tmp_path: Path) -> None:
    model = build_model(ModelConfig(num_classes=4, image_size=32)).eval()
    x = torch.rand(2, 3, 32, 32)
    folder = tmp_path / "model"
    mlflow.pytorch.save_model(LogitsOnly(model).eval(), str(folder), input_example=x.numpy(),
                              serialization_format="pt2")
    loaded, run_id, params = load_target(str(folder))
    assert run_id is None and params == {}
    assert torch.allclose(loaded(x)["logits"], model(x)["logits"], atol=1e-5)
