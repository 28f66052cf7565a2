# Toy detection schedule: 400 steps of one image (one pass over the 400 toy images), SGD at
# lr 0.02 after a 100-step linear warm-up; validation every 200 steps (the configs' hooks
# checkpoint at the same interval).
max_iters = 400
interval = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100)]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=1)
