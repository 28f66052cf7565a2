_base_ = [
    '../_base_/models/mask-rcnn_r101_fpn_bcn-ws.py', 'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_2x.py', 'mmdet::_base_/default_runtime.py'
]
