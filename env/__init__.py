"""The adversarial augmentation environment (filled by the env issue).

`FaceAugmentEnv(gymnasium.Env)`, registered as `veil/FaceAugment-v0`, will wrap a
`recognition.Trainer`: each step an agent's action is decoded into frequency-MixUp and
random-erasing parameters (`defenses`), the FR loss on the augmented batch is the reward, and
alternating phases let the FR model minimize that loss under a utility constraint, with a
periodic privacy probe from `attacks`.
"""
