# The authors' "2x" Mask R-CNN schedule (mmdet's gn+ws/*_20-23-24e): mmdet's 2x, 24 epochs, with
# the lr divided by 10 after epochs 20 and 23 instead of 16 and 22; total batch 16, lr 0.02.
_base_ = 'mmdet::_base_/schedules/schedule_2x.py'
param_scheduler = [
    _base_.param_scheduler[0],
    dict(_base_.param_scheduler[1], milestones=[20, 23]),
]
