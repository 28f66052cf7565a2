_base_ = './deeplabv3_r50-d8_gn-ws_8xb2-40k_voc12aug-512x512.py'
model = dict(pretrained='open-mmlab://jhu/resnet101_gn_ws', backbone=dict(depth=101))
