# Plain BN (no WS) counterpart of the toy BCN+WS classifier.
_base_ = './toy-cls_r18_bcn-ws.py'
norm_cfg = dict(_delete_=True, type='BN', requires_grad=True)  # drop BCN's num_groups
model = dict(backbone=dict(conv_cfg=None, norm_cfg=norm_cfg))
