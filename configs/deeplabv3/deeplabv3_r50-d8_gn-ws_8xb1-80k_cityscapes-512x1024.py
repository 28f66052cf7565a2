# As the 4xb2 config at 1 image per GPU: same total batch (8), lr and schedule.
_base_ = './deeplabv3_r50-d8_gn-ws_4xb2-80k_cityscapes-512x1024.py'
train_dataloader = dict(batch_size=1)
