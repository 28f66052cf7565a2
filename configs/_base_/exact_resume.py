# Exact resume: every checkpoint carries the random generators' states (Python, NumPy, torch CPU
# and CUDA, per process) and --resume restores them, so a resumed run draws the same dropout
# masks, RoI samples and augmentations as the uninterrupted one (mmws.RandomStateHook). Every
# mmws config inherits this through its model base; a config that adds hooks keeps it with
# `custom_hooks = _base_.custom_hooks + [...]` (MMEngine replaces lists, it does not merge them).
custom_hooks = [dict(type='mmws.RandomStateHook')]
