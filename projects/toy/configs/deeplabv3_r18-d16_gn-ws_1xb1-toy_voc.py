# The toy BCN+WS run with GroupNorm(32) in place of BCN (same mmws.ConvWS): GN+WS.
_base_ = './deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py'
norm_cfg = dict(_delete_=True, type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
