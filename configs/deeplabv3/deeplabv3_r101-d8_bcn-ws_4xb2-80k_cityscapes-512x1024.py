_base_ = './deeplabv3_r50-d8_bcn-ws_4xb2-80k_cityscapes-512x1024.py'
model = dict(pretrained='checkpoints/resnet101_bcn_ws.pth', backbone=dict(depth=101))
