# The toy BN Mask R-CNN fine-tuned from the toy-pretrained BN ResNet-18 as mmdet fine-tunes BN
# backbones: the backbone's BN layers keep the pretrained statistics (norm_eval=True). The FPN
# and heads, trained from scratch, use the batch statistics of one image (of its RoIs in the
# heads), as in the from-scratch BN config.
_base_ = './mask-rcnn_r18_fpn_bn_1xb1-toy_coco.py'
pretrained = 'checkpoints/toy/resnet18_bn_1xb32-toy_cls.pth'
model = dict(
    backbone=dict(
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(
            _delete_=True, type='Pretrained', prefix='backbone.', checkpoint=pretrained)))
train_cfg = dict(max_iters=300, val_interval=150)  # the from-scratch configs train 400 steps
