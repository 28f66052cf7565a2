# The toy runs with plain BN (no WS), at 2 images per GPU: at 1 image the ASPP image-pool branch
# gives BN a single value per channel ("Expected more than 1 value per channel"), and batch > 1
# is mmseg's answer to that error. Same iterations and lr, so BN sees twice the images of the
# other toy runs.
_base_ = './deeplabv3_r18-d16_gn_1xb1-toy_voc.py'
norm_cfg = dict(_delete_=True, type='BN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=2)
