_base_ = [
    '../_base_/models/faster-rcnn_r50_fpn_bcn-ws.py', 'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py', 'mmdet::_base_/default_runtime.py'
]
