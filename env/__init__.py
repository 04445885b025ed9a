"""The adversarial augmentation environment.

`FaceAugmentEnv(gymnasium.Env)`, registered as `veil/FaceAugment-v0`, wraps a
`recognition.Trainer`: each step an agent's action is decoded into frequency-MixUp and
random-erasing parameters (`defenses`), the FR loss on the augmented batch is the reward, and
alternating phases let the FR model minimize that loss under a utility constraint, with a
periodic privacy probe (a hook the attack harness fills).
"""

import gymnasium as gym

from .deploy_price import DeployPrice
from .face_augment import OBS_DIM, OBS_NAMES, EnvConfig, FaceAugmentEnv

ENV_ID = "veil/FaceAugment-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="veil.env.face_augment:FaceAugmentEnv")

__all__ = ["DeployPrice", "ENV_ID", "EnvConfig", "FaceAugmentEnv", "OBS_DIM", "OBS_NAMES"]
