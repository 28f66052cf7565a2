# The toy BCN+WS Mask R-CNN fine-tuned at 1 image per GPU from a ResNet-18 pretrained on the
# toy classification data with BCN+WS (BCN in batch mode, 32 crops per step): the paper's
# pretrain-then-fine-tune recipe at toy scale. BCN fine-tunes in micro-batch mode, starting
# from the pretrained estimates. Write the checkpoint first (`make train-toy` does):
#   python projects/toy/tools/pretrain_toy_backbone.py projects/toy/configs/resnet18_bcn-ws_1xb32-toy_cls.py
_base_ = './mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py'
pretrained = 'checkpoints/toy/resnet18_bcn-ws_1xb32-toy_cls.pth'
model = dict(
    backbone=dict(
        frozen_stages=1,  # as mmdet fine-tunes: the stem and the first stage stay fixed
        init_cfg=dict(
            _delete_=True, type='Pretrained', prefix='backbone.', checkpoint=pretrained)))
train_cfg = dict(max_iters=300, val_interval=150)  # the from-scratch configs train 400 steps
