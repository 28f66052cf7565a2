# Toy classification pretraining: 400 steps of 32 crops (about 5 passes over the 2500 training
# crops), SGD at lr 0.1 with a 50-step linear warm-up and a cosine decay to 0; evaluation and a
# checkpoint at the end. Includes mmdet's runtime (default scope 'mmdet': its ResNet and
# transforms), with logs and checkpoints counted in iterations.
_base_ = 'mmdet::_base_/default_runtime.py'
max_iters = 400
warmup_iters = 50
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup_iters, end=max_iters,
         T_max=max_iters - warmup_iters)
]
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001))
default_hooks = dict(
    logger=dict(interval=50, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=max_iters))
log_processor = dict(by_epoch=False)
