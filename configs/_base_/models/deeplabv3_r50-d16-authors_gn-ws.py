# The authors' DeepLabV3 R-50-D16 (./deeplabv3_r50-d16-authors_syncbn.py) with GN+WS in every
# conv and norm slot (github.com/chenxi116/DeepLabv3.pytorch at 046818d, file:line): WS as
# unbiased std + 1e-5 (deeplab.py:28-32, mmws.ConvWS's default), GroupNorm(32) with eps 1e-5
# (deeplab.py:139; README.md:25 `--groups 32 --weight_std`), from the authors' ImageNet GN+WS
# weights (deeplab.py:224-227; open-mmlab's copy of them).
_base_ = './deeplabv3_r50-d16-authors_syncbn.py'

conv_cfg = dict(type='mmws.ConvWS')
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    pretrained='open-mmlab://jhu/resnet50_gn_ws',
    backbone=dict(conv_cfg=conv_cfg, norm_cfg=dict(_delete_=True, **norm_cfg)),
    decode_head=dict(conv_cfg=conv_cfg, norm_cfg=dict(_delete_=True, **norm_cfg)))
