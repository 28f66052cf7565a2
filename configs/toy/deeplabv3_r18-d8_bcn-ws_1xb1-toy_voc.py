# BCN+WS DeepLabV3 on the embedded toy VOC data, 1 image per GPU, trained from scratch on CPU in
# minutes: ResNetV1c-18-D8 (mmseg's deep stem, BCN after each of its three convs), 96x96 crops.
_base_ = [
    '../_base_/models/deeplabv3_r50-d8_bcn-ws.py', '../_base_/datasets/toy_voc.py',
    'mmseg::_base_/default_runtime.py'
]
num_classes = 5  # background + 4 shapes
crop_size = (96, 96)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(type='ResNetV1c', depth=18),
    decode_head=dict(in_channels=512, channels=128, num_classes=num_classes),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=num_classes))

max_iters = 500
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, by_epoch=False, begin=50, end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters // 2))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
