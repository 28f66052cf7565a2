# The toy BCN+WS Mask R-CNN with mmws.PreciseBCNHook: before each validation (steps 200 and 400)
# every trained BCN's estimates become the statistics of its input over 200 training images.
_base_ = './mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py'
custom_hooks = _base_.custom_hooks + [dict(type='mmws.PreciseBCNHook', num_samples=200)]
