# DeepLabV3 R-50-D8 with GN+WS: mmws.ConvWS and GroupNorm(32) in every norm slot (backbone stem,
# blocks and downsample; the ASPP head, its image-pool branch included; the auxiliary FCN head).
# The backbone has the torchvision stem (a single 7x7 conv, mmseg `ResNet`) of the ImageNet GN+WS
# weights it starts from; `backbone=dict(type='ResNetV1c')` with `pretrained=None` trains
# mmseg's deep stem from scratch.
_base_ = ['mmseg::_base_/models/deeplabv3_r50-d8.py', '../exact_resume.py']

custom_imports = dict(imports=['mmws'], allow_failed_imports=False)

conv_cfg = dict(type='mmws.ConvWS')
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    pretrained='open-mmlab://jhu/resnet50_gn_ws',
    backbone=dict(type='ResNet', conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    decode_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    auxiliary_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg))
