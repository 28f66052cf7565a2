# Cityscapes (19 classes), 512x1024 crops, 4 GPUs x 2 images: mmseg's batch of 8, lr 0.01, 80k
# iterations. A leaf sets the model's data_preprocessor size from crop_size.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py'
]
crop_size = (512, 1024)
auto_scale_lr = dict(enable=False, base_batch_size=8)
