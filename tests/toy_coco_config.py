"""The toy COCO data at test size: the start of the tests' toy detector configs.

A few deterministic 96-pixel scenes (written on first use to ``data_root``) and the train and
test pipelines at that size; each test appends what it needs (loaders, schedule, hooks).
"""

HEADER = """
_base_ = '{base}'
data_root = '{data_root}/'
spec = dict(num_train={num_train}, num_val={num_val}, size=(96, 96), seed=1)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
"""


def toy_coco_header(base, data_root, num_train: int = 4, num_val: int = 2) -> str:
    """The config text up to the pipelines, inheriting from the config file ``base``."""
    return HEADER.format(base=base, data_root=data_root, num_train=num_train, num_val=num_val)
