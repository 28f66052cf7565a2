# Plain GN (no WS) counterpart of the toy BCN+WS classifier.
_base_ = './toy-cls_r18_bcn-ws.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(backbone=dict(conv_cfg=None, norm_cfg=norm_cfg))
