# The toy DeepLabV3 fine-tuned at 1 image per GPU from a ResNet-18 pretrained on the toy
# classification data with the same norm (32 crops per step; BCN in batch mode there, in
# micro-batch mode here, starting from the pretrained estimates): the paper's
# pretrain-then-fine-tune recipe at toy scale. mmseg's ResNet (the 7x7 stem the classifier has),
# its first three stages as the from-scratch config (the checkpoint's fourth stage is not
# loaded). Write the checkpoint first:
#   python projects/toy/tools/pretrain_toy_backbone.py projects/toy/configs/resnet18_gn-ws_1xb32-toy_cls.py
_base_ = './deeplabv3_r18-d16_gn-ws_1xb1-toy_voc.py'
pretrained = 'checkpoints/toy/resnet18_gn-ws_1xb32-toy_cls.pth'
model = dict(
    backbone=dict(
        type='ResNet',
        init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=pretrained)))
