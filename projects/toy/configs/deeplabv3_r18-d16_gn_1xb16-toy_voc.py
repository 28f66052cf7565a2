# The toy GN+WS run at 16 images per step without WS: plain convs and GroupNorm(32).
_base_ = './deeplabv3_r18-d16_gn-ws_1xb16-toy_voc.py'
model = dict(
    backbone=dict(conv_cfg=None), decode_head=dict(conv_cfg=None),
    auxiliary_head=dict(conv_cfg=None))
