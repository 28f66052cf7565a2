# Mask R-CNN R-50-FPN with GN+WS in every norm slot the paper uses: the backbone (stem,
# blocks, downsample), the FPN, the 4conv1fc box head and the mask head.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../exact_resume.py']
custom_imports = dict(imports=['mmws'], allow_failed_imports=False)

conv_cfg = dict(type='mmws.ConvWS')  # std + eps, the form of the released GN+WS weights
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        # ImageNet GN+WS (the authors' weights in MMEngine's model zoo, mmdet layout). From
        # scratch: model = dict(backbone=dict(init_cfg=None, frozen_stages=-1))
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://jhu/resnet50_gn_ws')),
    neck=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            conv_cfg=conv_cfg,
            norm_cfg=norm_cfg),
        mask_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)))
