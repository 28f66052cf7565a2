# DeepLabV3 R-50 at output stride 16 as the code behind the WS/BCN paper's VOC numbers builds it
# (github.com/chenxi116/DeepLabv3.pytorch: deeplab.py and main.py at commit 046818d, cited as
# file:line), BN in every norm slot, synchronized over all GPUs. The authors ran R-101 only
# (main.py:69-77); the R-50 configs are the same recipe at depth 50.
# mmseg's model, with these differences left (each below 0.1 mIoU expected, none measured):
# the projection's input channels are concatenated image pooling first (the authors' last:
# deeplab.py:87; a permutation, irrelevant from a fresh head); the classifier starts from
# mmseg's N(0, 0.01) (the authors': PyTorch's default with WS, He fan-out without:
# deeplab.py:161-164).
_base_ = ['mmseg::_base_/models/deeplabv3_r50-d8.py', '../exact_resume.py']

custom_imports = dict(imports=['mmws', 'mmws.models.deeplabv3_head'], allow_failed_imports=False)

# BN momentum (PyTorch's convention, as mmcv's): 0.05 in the backbone (deeplab.py:139), 0.0003 in
# ASPP (deeplab.py:39, 58-65).
backbone_norm_cfg = dict(type='SyncBN', momentum=0.05, requires_grad=True)
head_norm_cfg = dict(type='SyncBN', momentum=0.0003, requires_grad=True)
# Every batch is zero-padded (after normalization) to the 513 x 513 crop (main.py:47), label 255,
# in training and evaluation alike (pascal.py:48-51, utils.py:78-83).
data_preprocessor = dict(size=(513, 513), test_cfg=dict(size=(513, 513)))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='torchvision://resnet50',  # torchvision's ImageNet weights: deeplab.py:228-229
    backbone=dict(
        type='ResNet',  # torchvision's 7x7 stem, not mmseg's V1c deep stem: deeplab.py:143-145
        depth=50,
        strides=(1, 2, 2, 1),  # output stride 16: layer3 stride 2, layer4 1 (deeplab.py:156-157)
        dilations=(1, 1, 1, 2),  # layer4 at dilation 2: deeplab.py:157-158
        contract_dilation=True,  # layer4's first block at dilation 1: deeplab.py:174, 179
        norm_cfg=backbone_norm_cfg),
    decode_head=dict(
        type='mmws.DeepLabV3Head',
        channels=256,  # ASPP width: deeplab.py:159
        dilations=(1, 6, 12, 18),  # 1x1 branch and rates 6-12-18: deeplab.py:47-56
        projection_kernel_size=1,  # the 1x1 projection conv2: deeplab.py:63-64
        dropout_ratio=0,  # no dropout before the classifier: deeplab.py:88-91
        num_classes=21,
        norm_cfg=head_norm_cfg,
        align_corners=True,  # image pooling and logits upsampled so: deeplab.py:85-86, 199
        # nn.CrossEntropyLoss(ignore_index=255): the mean over labelled pixels (main.py:80).
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)),
    auxiliary_head=None)  # the loss is on the ASPP output alone: main.py:129-130
