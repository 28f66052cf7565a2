_base_ = './mask-rcnn_r50_fpn_bcn-ws.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet101_bcn_ws.pth')))
