# The toy GN Mask R-CNN fine-tuned from the toy-pretrained GN ResNet-18 (see the BCN+WS config
# of this family).
_base_ = './mask-rcnn_r18_fpn_gn_1xb1-toy_coco.py'
pretrained = 'checkpoints/toy/resnet18_gn_1xb32-toy_cls.pth'
model = dict(
    backbone=dict(
        frozen_stages=1,
        init_cfg=dict(
            _delete_=True, type='Pretrained', prefix='backbone.', checkpoint=pretrained)))
train_cfg = dict(max_iters=300, val_interval=150)  # the from-scratch configs train 400 steps
