"""The user-facing side of veil: the `veil` CLI, MLflow tracking and (later) the SB3 agent,
its callbacks and the policy export."""
