# DeepLabV3 R-50-D8, GN+WS, PASCAL VOC 2012 + SBD aug, 512x512 crops, 8 GPUs x 2 images, 40k.
_base_ = [
    '../_base_/models/deeplabv3_r50-d8_gn-ws.py', '../_base_/datasets/voc12aug-512x512_8xb2-40k.py'
]
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    decode_head=dict(num_classes=_base_.num_classes),
    auxiliary_head=dict(num_classes=_base_.num_classes))
