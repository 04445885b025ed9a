"""Exported policies in MLflow's Model Registry: one registered model per game
(``veil-policy-<data>``), a version per export, and the alias ``best``, which ``veil benchmark``
moves to the policy that protected most within the accuracy budget. ``models:/NAME@best`` (or
``models:/NAME/VERSION``) then stands wherever a policy file does; veil reads only the version's
safetensors file, and the logged model is code, not a pickle (``veil.agents.policy_model``)."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from . import policy_model
from .export import PolicyAugmenter
from .tracking import veil_code_tree

POLICY_CODE = ("agents", "defenses", "env", "recognition")
"""The veil subpackages a served policy imports: ``veil.agents.policy_model`` and the game's
action and observation code with what ``veil.env`` imports."""
POLICY_REQUIREMENTS = ("safetensors", "numpy", "gymnasium", "pillow", "tqdm")
"""What those subpackages import besides torch (pinned when logging) and MLflow."""
BEST = "best"
"""The alias ``veil benchmark`` sets on the best-protecting policy version within the budget."""
SHA_TAG = "veil.policy_sha256"
"""A version's tag holding its policy file's SHA-256: how a benchmark finds the version it scored."""


def registered_name(data_source: str) -> str:
    """The registered model of a game on ``data_source`` (a built-in name or a folder path)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(data_source)).name).strip("-") or "data"
    return f"veil-policy-{slug}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def log_policy_model(policy_path: str | Path, name: str = "policy_model",
                     registered: str | None = None) -> mlflow.models.model.ModelInfo:
    """Log the exported policy as an MLflow pyfunc model (servable with ``mlflow models serve``)
    from code (``policy_model``; nothing pickled), with the ``veil`` code it runs, so it loads
    where veil is not installed; with ``registered``, as a new version of that registered model,
    tagged with the file's SHA-256."""
    augmenter = PolicyAugmenter.load(policy_path)
    example = np.zeros((1, augmenter.obs_width), dtype=np.float32)
    actions = augmenter.act(torch.from_numpy(example)).numpy()
    with veil_code_tree(*POLICY_CODE) as code:
        info = mlflow.pyfunc.log_model(
            name=name, python_model=policy_model.__file__, artifacts={"policy": str(policy_path)},
            input_example=example, signature=infer_signature(example, actions), code_paths=[str(code)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", *POLICY_REQUIREMENTS],
            registered_model_name=registered,
        )
    if registered:
        MlflowClient().set_model_version_tag(registered, str(info.registered_model_version), SHA_TAG,
                                             file_sha256(policy_path))
    return info


def policy_file(spec: str | Path) -> Path:
    """A policy given as a file, or as a registered version (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``): the local safetensors file (a registered one is downloaded)."""
    text = str(spec)
    if not text.startswith("models:/"):
        return Path(text)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
    except MlflowException as err:
        raise FileNotFoundError(f"policy {text}: {str(err).splitlines()[0]} (registered policies: "
                                "veil ui, Models)") from None
    files = sorted((local / "artifacts").glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"policy {text} holds {len(files)} policy files in artifacts/, expected one")
    return files[0]


def version_of(path: str | Path) -> tuple[str, str] | None:
    """The registered model name and version whose policy file is ``path`` (by SHA-256), if any."""
    found = MlflowClient().search_model_versions(f"tags.`{SHA_TAG}` = '{file_sha256(path)}'")
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    return newest.name, str(newest.version)


def mark_best(cells: list[dict[str, Any]], policies: dict[tuple[str, int], str], attack: str,
              budget: float = 2.0) -> dict[str, str]:
    """Set the alias ``best`` on the registered policy that protected most: among the policy cells
    (``policies``: (defense, seed) -> the policy file it trained with) whose accuracy is at most
    ``budget`` points below the ``none`` cell of the same seed, the lowest ``attack`` top-1; one
    per registered model. Returns ``{name: version}`` of the aliases set."""
    none = {c["seed"]: c for c in cells if c["defense"] == "none"}
    best: dict[str, tuple[float, str]] = {}
    for c in cells:
        path = policies.get((c["defense"], c["seed"]))
        ref = none.get(c["seed"])
        top1 = c["attacks"].get(attack, {}).get("top1")
        if path is None or ref is None or top1 is None or not math.isfinite(top1):
            continue
        if 100 * (ref["natural_top1"] - c["natural_top1"]) > budget:
            continue
        found = version_of(policy_file(path))
        if found is not None and (found[0] not in best or top1 < best[found[0]][0]):
            best[found[0]] = (top1, found[1])
    client = MlflowClient()
    for name, (_, version) in best.items():
        client.set_registered_model_alias(name, BEST, version)
    return {name: version for name, (_, version) in best.items()}
