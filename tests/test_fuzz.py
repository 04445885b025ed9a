"""Property tests over the readers of files veil may be handed by someone else: whatever the bytes,
a reader returns what it reads or raises its one documented error (``ValueError``, or
``DataError`` for images), never anything else. Sized to run in CI in well under a minute."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from veil.agents.attack_cli import model_from_checkpoint
from veil.agents.benchmark import cell_options, load_cell
from veil.agents.export import PolicyAugmenter
from veil.agents.plan import Plan, load_plan
from veil.agents.schedules import FORMAT as SCHEDULE_FORMAT
from veil.agents.schedules import load_schedule
from veil.defenses.schedule import Schedule
from veil.recognition.data import DataConfig, DataError, _read_one

FAST = settings(max_examples=int(os.environ.get("VEIL_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
PLAN_KEYS = {"": ["rows", "seeds", "out_dir", "undefended_curve", "policy", "bogus"],
             "data": ["source", "image_size", "channels", "align", "pose", "max_identities", "x"],
             "split": ["n_private", "test_fraction", "seed", "validation", "y"],
             "budget": ["epochs", "batch_size", "lr", "model", "threads"],
             "attacks": ["names", "identities", "attack_seeds", "restarts", "gan_steps", "gan_seconds"],
             "defenses.d1": ["use", "mix_k", "mix_radius", "re_area", "policy", "mix_band", "nope"],
             "calibrate": ["param", "values", "budget", "fix", "k_max"],
             "race": ["calibration", "validation_seeds", "test_seeds", "budget", "box", "switches", "learners", "z"],
             "learn.t1": ["learner", "episodes", "segments", "free", "out", "ppo_lr", "w"],
             "defenses.d2": ["use", "schedule", "target"]}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


@st.composite
def plan_texts(draw) -> str:
    """A TOML plan with known and unknown keys of any type in every table."""
    lines = []
    for table, keys in PLAN_KEYS.items():
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=4))
        if table:
            lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(draw(values))}" for key in chosen]
    return "\n".join(lines) + "\n"


def reads_or_refuses(read, *args, error: type[Exception] = ValueError):
    """``read(*args)``'s result, or None when it raised its documented ``error``; any other
    exception fails the test."""
    try:
        return read(*args)
    except error:
        return None


def write(data: bytes | str, name: str) -> Path:
    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@FAST
@given(plan_texts())
def test_a_plan_of_any_keys_and_types_loads_or_is_a_value_error(text: str) -> None:
    plan = reads_or_refuses(load_plan, write(text, "plan.toml"))
    assert plan is None or isinstance(plan, Plan)


SCHEDULE_KEYS = ["until", "k", "alpha", "radius", "high_band", "erase_p", "erase_area", "erase_aspect", "label_follow",
                 "box", "bogus"]


@st.composite
def schedule_texts(draw) -> str:
    """A schedule file with phases of known and unknown keys of any type."""
    lines = [f'format = "{SCHEDULE_FORMAT}"'] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 3))):
        lines.append("[[phase]]")
        lines += [f"{key} = {toml_value(draw(values))}"
                  for key in draw(st.lists(st.sampled_from(SCHEDULE_KEYS), unique=True, max_size=10))]
    return "\n".join(lines) + "\n"


@FAST
@given(st.one_of(schedule_texts(), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_a_schedule_file_of_any_content_loads_or_is_a_value_error(text: str) -> None:
    schedule = reads_or_refuses(load_schedule, write(text, "schedule.toml"))
    assert schedule is None or isinstance(schedule, Schedule)


@FAST
@given(st.binary(max_size=300))
def test_plan_bytes_load_or_are_a_value_error(data: bytes) -> None:
    reads_or_refuses(load_plan, write(data, "plan.toml"))


@FAST
@pytest.mark.filterwarnings("ignore:skipping unreadable image")
@given(st.one_of(st.binary(max_size=200), st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)))
def test_image_bytes_decode_or_are_skipped_or_a_data_error(data: bytes) -> None:
    path = write(data, "face.png")
    pixels = _read_one(path, DataConfig(image_size=16), None)  # lenient: None (with a warning) or the image
    assert pixels is None or pixels.shape == (3, 16, 16)
    reads_or_refuses(_read_one, path, DataConfig(image_size=16, strict=True), None, error=DataError)


@FAST
@given(st.binary(max_size=400))
def test_checkpoint_bytes_load_or_are_a_value_error(data: bytes) -> None:
    reads_or_refuses(model_from_checkpoint, write(data, "target.pt"))


@FAST
@given(st.dictionaries(st.text(max_size=8), values, max_size=6),
       st.dictionaries(st.sampled_from(["0.weight", "0.bias", "2.weight", "log_std", "x"]),
                       st.lists(st.integers(1, 5), min_size=1, max_size=2), max_size=4))
def test_a_policy_of_any_header_and_tensors_loads_or_is_a_value_error(header: dict, shapes: dict) -> None:
    meta = {"format": "veil-policy-1", "layers": ["linear"], "squash": "clip", "k_max": 6, **header}
    tensors = {k: torch.randn(*shape) for k, shape in shapes.items()}
    path = Path(tempfile.mkdtemp()) / "policy.safetensors"
    save_file(tensors, str(path), metadata={"veil": json.dumps(meta, default=str)})
    reads_or_refuses(PolicyAugmenter.load, path)


@FAST
@given(st.lists(st.text(max_size=10), max_size=6))
def test_a_cells_recorded_options_read_or_are_a_value_error(words: list[str]) -> None:
    options = reads_or_refuses(cell_options, {"defense": "x", "seed": 0, "train_args": words})
    assert options is None or isinstance(options, dict)


@FAST
@given(st.one_of(st.binary(max_size=200), st.dictionaries(st.sampled_from(
    ["defense", "seed", "natural_top1", "natural_top5", "attacks", "options", "train_args"]), values, max_size=7)
    .map(lambda d: json.dumps(d).encode())))
def test_cell_bytes_load_or_are_a_value_error(data: bytes) -> None:
    cell = reads_or_refuses(load_cell, write(data, "none-s0.json"))
    assert cell is None or isinstance(cell, dict)
