# DeepLabV3 R-50-D16 as the authors trained it on PASCAL VOC 2012 aug (see the _base_ files for
# every value and its source), 8 GPUs x 2 images = the authors' 16 per step (main.py:33), with
# GN+WS (no batch statistics: 8xb2 and 16xb1 train the same model).
_base_ = [
    '../_base_/models/deeplabv3_r50-d16-authors_gn-ws.py',
    '../_base_/datasets/pascal_voc12_aug-authors_513x513.py',
    'mmseg::_base_/default_runtime.py', '../_base_/schedules/schedule_33k_authors-voc.py'
]
