_base_ = [
    '../_base_/models/mask-rcnn_r101_fpn_gn-ws.py', 'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_20-23-24e.py', 'mmdet::_base_/default_runtime.py'
]
