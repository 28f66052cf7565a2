# DeepLabV3 R-50-D8 with BCN+WS: as GN+WS with mmws.BCN in every norm slot, in micro-batch mode
# (estimated batch statistics, updated from the images of all GPUs). The ImageNet BCN+WS weights
# (the authors' rn50_bcn_ws.pth, converted with tools/convert_checkpoint.py) were trained with
# sqrt(unbiased var + eps) weight standardization, hence eps_inside_sqrt.
_base_ = './deeplabv3_r50-d8_gn-ws.py'

conv_cfg = dict(type='mmws.ConvWS', eps_inside_sqrt=True)
norm_cfg = dict(type='mmws.BCN', num_groups=32, mode='micro', requires_grad=True)
model = dict(
    pretrained='checkpoints/resnet50_bcn_ws.pth',
    backbone=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    decode_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    auxiliary_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg))
