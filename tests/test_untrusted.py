"""Files veil reads may come from someone else: none of them can run code, and a bad one is a
one-line error naming it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from veil.agents.attack_cli import load_target
from veil.agents.cli import main
from veil.agents.export import PolicyAugmenter
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


POLICY = Path(__file__).resolve().parents[1] / "docs/results/syn-price-30ep/policies/agent-price-s0.safetensors"


def _policy_parts() -> tuple[dict, dict]:
    with safe_open(str(POLICY), framework="pt") as f:
        return json.loads(f.metadata()["veil"]), {k: f.get_tensor(k) for k in f.keys()}


def _craft(tmp_path: Path, meta: dict | str, tensors: dict) -> Path:
    path = tmp_path / "crafted.safetensors"
    save_file(tensors, str(path), metadata={"veil": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


def _edit(meta_change: dict | None = None, drop: str | None = None, replace: dict | None = None,
          raw: str | None = None):
    def make(tmp_path: Path) -> Path:
        meta, tensors = _policy_parts()
        meta.update(meta_change or {})
        tensors = {k: v for k, v in tensors.items() if k != drop}
        tensors.update(replace or {})
        return _craft(tmp_path, raw if raw is not None else meta, tensors)
    return make


@pytest.mark.parametrize("make, message", [
    (_edit(replace={"2.weight": torch.zeros(64, 32)}), "layer 2: takes 32 inputs where 64 come in"),
    (_edit(replace={"0.bias": torch.zeros(63)}), "layer 0: weight (64, 16) and bias (63,)"),
    (_edit(drop="4.bias"), "layer 4: its weight or bias tensor is missing"),
    (_edit({"layers": ["linear", "tanh", "linear"]}), "layers: the last layer gives 64 outputs, the action has 8"),
    (_edit(replace={"9.weight": torch.zeros(1)}), "tensors: unexpected ['9.weight']"),
    (_edit({"layers": ["linear", "tanh", "linear", "tanh", "linear", "tanh", "linear"]}), "layer 6: its weight"),
    (_edit({"layers": ["linear", "gelu", "linear", "tanh", "linear"]}), "layers: must be a list"),
    (_edit({"k_max": 1_000_000_000}), "k_max: must be an integer in 1..16"),
    (_edit({"k_max": 4.5}), "k_max: must be an integer"),
    (_edit({"squash": "sigmoid"}), "squash: must be clip or tanh"),
    (_edit(replace={"log_std": torch.zeros(3)}), "log_std: must be 8 finite numbers"),
    (_edit(replace={"0.weight": torch.full((64, 16), float("nan"))}), "layer 0: holds NaN or inf"),
    (_edit({"action_table": [["k", "x"]]}), "action_table: must list the 8 action parameters"),
    (_edit({"fallbacks": {"acc_val": "high"}}), "fallbacks: must map names to numbers"),
    (_edit(raw="{not json"), "is not a veil policy file"),
    (_edit(raw="[1, 2]"), "is not a veil policy file"),
])
def test_a_malformed_policy_file_is_a_one_line_error_naming_the_field(tmp_path: Path, make, message: str,
                                                                      capsys: pytest.CaptureFixture) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        PolicyAugmenter.load(path)
    assert main(["train-fr", *TINY, "--policy", str(path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err, "train-fr") and str(path) in err


def test_the_committed_policies_pass_the_policy_check() -> None:
    for path in sorted(POLICY.parents[2].glob("*/policies/*.safetensors")):
        assert PolicyAugmenter.load(path).codec.k_max == 6


@pytest.mark.parametrize("text, field", [
    ('{"defense": "none", "seed": "0", "natural_top1": 0.5, "attacks": {}}', "field 'seed'"),
    ('{"defense": "none", "seed": 0, "natural_top1": 7, "attacks": {}}', "field 'natural_top1'"),
    ('{"defense": "none", "seed": 0, "natural_top1": 0.5, "attacks": {"pca": {"top1": "high"}}}', "field 'attacks'"),
    ('{"defense": "none", "seed": 0, "natural_top1": 0.5, "attacks": {}, "options": [1]}', "field 'options'"),
    ('{"defense": "none", "seed": 0', "is not JSON"),
    ('[1, 2]', "is not a cell record"),
])
def test_a_damaged_cell_is_a_one_line_error_naming_the_file_and_field(tmp_path: Path, text: str, field: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    cell = tmp_path / "bench" / "cells" / "none-s0.json"
    cell.parent.mkdir(parents=True)
    cell.write_text(text)
    assert main(["benchmark", "--defenses", "none", "--seeds", "0", "--attacks", "pca", "--summarize-only",
                 "--out-dir", str(tmp_path / "bench")]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err, "benchmark") and str(cell) in err and field in err


@pytest.mark.parametrize("report, field", [
    ({"param": "radius", "chosen": "0.1", "fixed": {}}, "field 'chosen'"),
    ({"param": "radius", "chosen": 0.1, "fixed": {"label_follow": "zero"}}, "field 'fixed'"),
    ({"param": "radius", "chosen": 0.1, "fixed": {}, "candidates": [{"value": 0.1}]}, "field 'candidates'"),
    ({"param": 3, "chosen": 0.1, "fixed": {}}, "field 'param'"),
])
def test_a_malformed_calibration_is_a_one_line_error_naming_the_field(tmp_path: Path, report: dict, field: str,
                                                                      capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(report))
    assert main(["train-agent", *TINY, "--calibration", str(path), "--timesteps", "8"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err, "train-agent") and str(path) in err and field in err
