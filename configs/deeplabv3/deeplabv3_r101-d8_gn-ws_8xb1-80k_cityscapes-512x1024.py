_base_ = './deeplabv3_r50-d8_gn-ws_8xb1-80k_cityscapes-512x1024.py'
model = dict(pretrained='open-mmlab://jhu/resnet101_gn_ws', backbone=dict(depth=101))
