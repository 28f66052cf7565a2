_base_ = [
    '../_base_/models/faster-rcnn_r50_fpn_gn-ws.py', '../_base_/datasets/coco_detection_8xb1.py',
    '../_base_/schedules/schedule_2x_8xb1.py', 'mmdet::_base_/default_runtime.py'
]
