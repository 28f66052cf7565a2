# PASCAL VOC 2012 + SBD aug (21 classes), 512x512 crops, 8 GPUs x 2 images: the total batch of 16
# and the lr 0.01 of mmseg's 4xb4 VOC schedule, 40k iterations. A leaf sets the model's
# data_preprocessor size and num_classes from crop_size and num_classes.
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12_aug.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py'
]
num_classes = 21
crop_size = (512, 512)
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
