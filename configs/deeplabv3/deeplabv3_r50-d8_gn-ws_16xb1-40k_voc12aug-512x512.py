# As the 8xb2 config at 1 image per GPU: same total batch (16), lr and schedule.
_base_ = './deeplabv3_r50-d8_gn-ws_8xb2-40k_voc12aug-512x512.py'
train_dataloader = dict(batch_size=1)
