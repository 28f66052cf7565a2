# DeepLabV3 R-50-D8, BCN+WS, PASCAL VOC 2012 + SBD aug, 512x512 crops, 8 GPUs x 2 images (the total
# batch of 16 and the lr 0.01 of mmseg's 4xb4 VOC schedule, the paper's total batch).
_base_ = [
    '../_base_/models/deeplabv3_r50-d8_bcn-ws.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=21),
    auxiliary_head=dict(num_classes=21))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
