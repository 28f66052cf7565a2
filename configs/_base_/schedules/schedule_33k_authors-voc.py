# The authors' VOC schedule for 16 images per step (github.com/chenxi116/DeepLabv3.pytorch at
# 046818d, file:line): SGD, lr 0.007 (README.md:15, 25; main.py's own default, 0.00025 at
# main.py:35, is not what they ran), momentum 0.9 and weight decay 1e-4 on every parameter
# (main.py:97-100), the same lr for the head (main.py:37, 124-125), poly decay with power 0.9 per
# iteration to 0 (main.py:123) over 50 epochs (README.md:15, 25) of the 10,582 VOC aug images
# in batches of 16 without drop_last (main.py:101-104): 50 x 662 = 33,100 iterations.
# Left: their last batch of each epoch holds 6 images (mmseg's infinite sampler always 16).
_base_ = 'mmseg::_base_/schedules/schedule_40k.py'

max_iters = 33100
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.007, momentum=0.9, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
# Evaluated once, after training (main.py:152 on); a checkpoint every 10 epochs (main.py:145-150).
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=6620))
# The lr is the authors' for 16 images in total: no automatic scaling.
auto_scale_lr = dict(enable=False, base_batch_size=16)
