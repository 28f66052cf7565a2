# The 20-23-24 epoch schedule for a total batch of 8 images (8 GPUs x 1): the linear rule's lr.
_base_ = './schedule_20-23-24e.py'
optim_wrapper = dict(optimizer=dict(lr=0.01))
auto_scale_lr = dict(base_batch_size=8)
