# The R-101 of ./deeplabv3_r50-d16-authors_bcn-ws-batch_8xb2-33k_voc12aug-513x513.py, the depth the
# authors ran (main.py:69-77). Paper column: none of its own: the paper's 78.10 belongs to the sync
# config; this one computes the same only if the authors' 16 images were spread over 8 GPUs, which
# they do not state.
_base_ = './deeplabv3_r50-d16-authors_bcn-ws-batch_8xb2-33k_voc12aug-513x513.py'
model = dict(pretrained='checkpoints/resnet101_bcn_ws.pth', backbone=dict(depth=101))
