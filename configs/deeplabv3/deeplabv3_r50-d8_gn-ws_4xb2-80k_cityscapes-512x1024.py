# DeepLabV3 R-50-D8, GN+WS, Cityscapes, 512x1024 crops, 4 GPUs x 2 images (mmseg's batch of 8,
# lr 0.01, 80k iterations).
_base_ = [
    '../_base_/models/deeplabv3_r50-d8_gn-ws.py', 'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_80k.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
auto_scale_lr = dict(enable=False, base_batch_size=8)
