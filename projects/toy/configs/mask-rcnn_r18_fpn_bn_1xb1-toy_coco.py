# Plain BN (no WS) counterpart of the toy BCN+WS Mask R-CNN, for comparison: batch statistics of
# one image per GPU in the backbone and FPN (of the sampled RoIs in the heads).
_base_ = './mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py'
norm_cfg = dict(_delete_=True, type='BN', requires_grad=True)  # drop BCN's num_groups
model = dict(
    backbone=dict(conv_cfg=None, norm_cfg=norm_cfg, norm_eval=False),
    neck=dict(conv_cfg=None, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(conv_cfg=None, norm_cfg=norm_cfg),
        mask_head=dict(conv_cfg=None, norm_cfg=norm_cfg)))
