# As ./deeplabv3_r50-d16-authors_bcn-ws-sync_8xb2-33k_voc12aug-513x513.py with BCN's batch part on
# each GPU's own 2 images (mode='batch'): what BCNorm's nn.BatchNorm2d computes under the authors'
# nn.DataParallel on 8 GPUs (main.py:81; BCN README.md:27-28). There is no 16xb1 variant: at 1 image
# per GPU the ASPP image-pool branch is 1x1, its batch part would see one value per channel (a zero
# variance, the output its bias alone), and per-GPU batch statistics cannot train there.
_base_ = './deeplabv3_r50-d16-authors_bcn-ws-sync_8xb2-33k_voc12aug-513x513.py'
model = dict(
    backbone=dict(norm_cfg=dict(mode='batch')), decode_head=dict(norm_cfg=dict(mode='batch')))
