# Faster R-CNN R-50-FPN with BCN+WS in every norm slot of the GN+WS model (micro-batch BCN).
_base_ = './faster-rcnn_r50_fpn_gn-ws.py'

# sqrt(var + eps): the form the authors' BCN+WS ImageNet weights were trained with.
conv_cfg = dict(type='mmws.ConvWS', eps_inside_sqrt=True)
norm_cfg = dict(type='mmws.BCN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        # Written by tools/convert_checkpoint.py from the authors' rn50_bcn_ws.pth.
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_bcn_ws.pth')),
    neck=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)))
