# The toy BCN+WS DeepLabV3 at 16 images per step: BCN's batch part on the 16 images' own
# statistics (mode='batch'; on one process the same as mode='sync' over 16 images, the setting
# of the paper's VOC table), its estimates used only in eval.
_base_ = './deeplabv3_r18-d16_gn-ws_1xb16-toy_voc.py'
norm_cfg = dict(_delete_=True, type='mmws.BCN', num_groups=32, mode='batch', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
