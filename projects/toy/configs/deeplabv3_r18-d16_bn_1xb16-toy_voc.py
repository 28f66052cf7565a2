# The toy GN run at 16 images per step with BatchNorm in place of GroupNorm: 16 images per
# step give the ASPP image-pool branch 16 values per channel, so BN trains here (at 1 image it
# cannot; its 1-image toy takes 2 images).
_base_ = './deeplabv3_r18-d16_gn_1xb16-toy_voc.py'
norm_cfg = dict(_delete_=True, type='BN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
