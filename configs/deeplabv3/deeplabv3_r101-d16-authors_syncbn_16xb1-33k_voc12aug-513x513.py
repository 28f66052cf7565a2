# The R-101 of ./deeplabv3_r50-d16-authors_syncbn_16xb1-33k_voc12aug-513x513.py, the depth the
# authors ran (main.py:69-77). Paper column: 76.49 mIoU, the authors' README (README.md:10).
_base_ = './deeplabv3_r50-d16-authors_syncbn_16xb1-33k_voc12aug-513x513.py'
model = dict(pretrained='torchvision://resnet101', backbone=dict(depth=101))
