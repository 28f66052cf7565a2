# The R-101 of ./deeplabv3_r50-d16-authors_gn-ws_16xb1-33k_voc12aug-513x513.py, the depth the
# authors ran (main.py:69-77). Paper column: 77.20 mIoU, the authors' README (README.md:11).
_base_ = './deeplabv3_r50-d16-authors_gn-ws_16xb1-33k_voc12aug-513x513.py'
model = dict(pretrained='open-mmlab://jhu/resnet101_gn_ws', backbone=dict(depth=101))
