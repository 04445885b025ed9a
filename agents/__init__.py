"""The user-facing side of veil: the ``veil`` commands, MLflow tracking, the SB3 agent and its
callbacks, and the policy export with ``PolicyAugmenter``."""
