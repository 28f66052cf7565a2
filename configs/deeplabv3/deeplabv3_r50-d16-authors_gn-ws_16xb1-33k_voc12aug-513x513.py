# As ./deeplabv3_r50-d16-authors_gn-ws_8xb2-33k_voc12aug-513x513.py at 16 GPUs x 1 image.
_base_ = './deeplabv3_r50-d16-authors_gn-ws_8xb2-33k_voc12aug-513x513.py'
train_dataloader = dict(batch_size=1)
