# GN+WS counterpart of the toy BCN+WS classifier (the toy GN+WS detectors' backbone layers).
_base_ = './toy-cls_r18_bcn-ws.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(backbone=dict(norm_cfg=norm_cfg))
