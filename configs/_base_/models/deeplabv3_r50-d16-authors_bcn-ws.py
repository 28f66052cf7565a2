# The authors' DeepLabV3 R-50-D16 with BCN+WS: mmws.BCN in every norm slot of the GN+WS model
# (./deeplabv3_r50-d16-authors_gn-ws.py), its batch part on the statistics of all GPUs' images
# (mode='sync'), as the authors' BCNorm's nn.BatchNorm2d on the whole batch (BCN README.md:27-28
# at commit 15aa060 of github.com/joe-siyuan-qiao/Batch-Channel-Normalization; its rate 0.1 is
# nn.BatchNorm2d's default, its channel part GN-style over 32 groups: README.md:18-35). Their VOC
# BCN+WS training script is not public; the GPU count behind the 16 images is not stated.
# The ImageNet BCN+WS weights (rn50_bcn_ws.pth, converted with tools/convert_checkpoint.py) were
# trained with sqrt(unbiased var + eps) WS, hence eps_inside_sqrt (the GN+WS code's form is
# std + eps, deeplab.py:31; the two differ only for filters of tiny norm).
_base_ = './deeplabv3_r50-d16-authors_gn-ws.py'

conv_cfg = dict(type='mmws.ConvWS', eps_inside_sqrt=True)
norm_cfg = dict(type='mmws.BCN', num_groups=32, mode='sync', momentum=0.1, requires_grad=True)
model = dict(
    pretrained='checkpoints/resnet50_bcn_ws.pth',
    backbone=dict(conv_cfg=conv_cfg, norm_cfg=dict(_delete_=True, **norm_cfg)),
    decode_head=dict(conv_cfg=conv_cfg, norm_cfg=dict(_delete_=True, **norm_cfg)))
