# Toy classification at 1-2 images per step (the micro-batch setting): 400 steps at lr 0.02,
# with a 50-step linear warm-up and a cosine decay to 0.
_base_ = './toy_cls.py'
max_iters = 400
warmup_iters = 50
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup_iters, end=max_iters,
         T_max=max_iters - warmup_iters)
]
optim_wrapper = dict(optimizer=dict(lr=0.02))
default_hooks = dict(checkpoint=dict(interval=max_iters))
