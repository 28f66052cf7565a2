_base_ = [
    '../_base_/models/mask-rcnn_r101_fpn_bcn-ws.py', '../_base_/datasets/coco_instance_8xb1.py',
    '../_base_/schedules/schedule_20-23-24e_8xb1.py', 'mmdet::_base_/default_runtime.py'
]
