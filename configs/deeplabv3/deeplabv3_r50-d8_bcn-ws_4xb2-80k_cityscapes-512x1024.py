# DeepLabV3 R-50-D8, BCN+WS, Cityscapes, 512x1024 crops, 4 GPUs x 2 images, 80k iterations.
_base_ = [
    '../_base_/models/deeplabv3_r50-d8_bcn-ws.py',
    '../_base_/datasets/cityscapes-512x1024_4xb2-80k.py'
]
model = dict(data_preprocessor=dict(size=_base_.crop_size))
