# COCO detection data at 1 image per GPU (the paper's micro-batch regime for R-101).
_base_ = 'mmdet::_base_/datasets/coco_detection.py'
train_dataloader = dict(batch_size=1)
