"""The adversarial augmentation environment.

``FaceAugmentEnv(gymnasium.Env)``, registered as ``veil/FaceAugment-v1`` (``ENV_ID``), wraps a
``veil.recognition.Trainer``: each step an agent's action is decoded into frequency-MixUp and
random-erasing parameters (``actions.ActionCodec``), the FR loss on the augmented batch is the
reward, and alternating phases let the FR model minimize that loss under a utility constraint,
with a periodic privacy probe (a hook ``veil.attacks`` fills). ``observation`` builds what the
agent sees; an exported policy (``veil.agents.export``) acts through the same two modules.
"""

import gymnasium as gym

from .actions import ACTION_DIM, ACTION_TABLE, PARAM_NAMES, ActionCodec
from .deploy_price import DeployPrice
from .face_augment import EnvConfig, FaceAugmentEnv
from .observation import OBS_DIM, OBS_NAMES, observation
from .schedule_game import FaceScheduleEnv, ScheduleGameConfig, schedule_of

ENV_ID = "veil/FaceAugment-v1"
SCHEDULE_ENV_ID = "veil/FaceSchedule-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="veil.env.face_augment:FaceAugmentEnv")
if SCHEDULE_ENV_ID not in gym.registry:
    gym.register(id=SCHEDULE_ENV_ID, entry_point="veil.env.schedule_game:FaceScheduleEnv")

__all__ = ["ACTION_DIM", "ACTION_TABLE", "ActionCodec", "DeployPrice", "ENV_ID", "EnvConfig", "FaceAugmentEnv",
           "FaceScheduleEnv", "OBS_DIM", "OBS_NAMES", "PARAM_NAMES", "SCHEDULE_ENV_ID", "ScheduleGameConfig",
           "observation", "schedule_of"]
