"""MLflow's model-from-code entry for an exported policy: the logged model is this file, the
``veil`` code it imports and the policy's safetensors file, so loading it unpickles nothing
(``mlflow.pyfunc.load_model`` runs this file; ``PolicyAugmenter.load`` reads only tensors)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from veil.agents.export import PolicyAugmenter

# MLflow warns, on import and on defining the class, that predict has no type hints (its input is a
# plain array: the signature is given when logging); its own decorator resets warning filters.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None
    import mlflow.models
    import mlflow.pyfunc

    class PolicyPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc serving the exported policy: observations (N, 16) -> actions (N, 8)."""

        def load_context(self, context) -> None:  # type: ignore[no-untyped-def]
            self.augmenter = PolicyAugmenter.load(context.artifacts["policy"])

        def predict(self, context, model_input, params=None) -> Any:  # type: ignore[no-untyped-def]
            obs = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            return self.augmenter.act(obs).numpy()

mlflow.models.set_model(PolicyPyfunc())
