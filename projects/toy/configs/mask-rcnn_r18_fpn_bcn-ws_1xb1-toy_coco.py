# BCN+WS Mask R-CNN trained from scratch on the toy COCO data at 1 image per GPU: the README's
# main command. Toy scale, to train on 2 CPU cores in minutes: ResNet-18 (the R-50 model's
# every other setting), 160 px images, 64-channel FPN and heads, fewer RoIs.
_base_ = [
    '../../../configs/_base_/models/mask-rcnn_r50_fpn_bcn-ws.py',
    './_base_/datasets/toy_coco_instance.py',
    './_base_/schedules/toy_det.py', 'mmdet::_base_/default_runtime.py'
]
custom_imports = dict(imports=['mmws', 'mmws_toy'], allow_failed_imports=False)
channels = 64
model = dict(
    backbone=dict(depth=18, frozen_stages=-1, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=4),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=20)))
default_hooks = dict(
    logger=dict(interval=20, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=_base_.interval))
log_processor = dict(by_epoch=False)
