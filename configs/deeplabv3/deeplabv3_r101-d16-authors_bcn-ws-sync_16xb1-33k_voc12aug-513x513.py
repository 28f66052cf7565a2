# The R-101 of ./deeplabv3_r50-d16-authors_bcn-ws-sync_16xb1-33k_voc12aug-513x513.py, the depth the
# authors ran (main.py:69-77). Paper column: 78.10 mIoU, the paper (Qiao et al., arXiv 1903.10520).
_base_ = './deeplabv3_r50-d16-authors_bcn-ws-sync_16xb1-33k_voc12aug-513x513.py'
model = dict(pretrained='checkpoints/resnet101_bcn_ws.pth', backbone=dict(depth=101))
