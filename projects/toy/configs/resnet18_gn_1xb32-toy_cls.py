_base_ = [
    './_base_/models/toy-cls_r18_gn.py', './_base_/datasets/toy_classification.py',
    './_base_/schedules/toy_cls.py'
]
