# Plain GN (no WS) counterpart of the toy BCN+WS Mask R-CNN, for comparison.
_base_ = './mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(conv_cfg=None, norm_cfg=norm_cfg),
    neck=dict(conv_cfg=None, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(conv_cfg=None, norm_cfg=norm_cfg),
        mask_head=dict(conv_cfg=None, norm_cfg=norm_cfg)))
