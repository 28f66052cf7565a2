_base_ = './faster-rcnn_r50_fpn_bcn-ws_8xb1-1x_coco.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet101_bcn_ws.pth')))
