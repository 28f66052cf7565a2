# GN+WS counterpart of the toy BCN+WS Mask R-CNN: same model, slots, data and schedule, and the
# same WS form (sqrt(var + eps)), so the two differ in the normalization only.
_base_ = './mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py'
conv_cfg = dict(type='mmws.ConvWS', eps_inside_sqrt=True)
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    neck=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
        mask_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)))
