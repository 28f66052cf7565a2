_base_ = './deeplabv3_r50-d8_bcn-ws_8xb2-40k_voc12aug-512x512.py'
model = dict(pretrained='checkpoints/resnet101_bcn_ws.pth', backbone=dict(depth=101))
