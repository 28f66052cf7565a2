# ResNet-18 classifier (mmws_toy.ImageClassifier) for the toy classification data, with BCN+WS in
# every norm slot of the backbone: the conv and norm layers of the toy BCN+WS detectors'
# backbone, so its weights load into them. BCN runs in micro-batch mode (the layer's default);
# large-batch pretraining sets mode='batch'.
_base_ = '../../../../../configs/_base_/exact_resume.py'
custom_imports = dict(imports=['mmws', 'mmws_toy'], allow_failed_imports=False)

conv_cfg = dict(type='mmws.ConvWS', eps_inside_sqrt=True)
norm_cfg = dict(type='mmws.BCN', num_groups=32, requires_grad=True)
model = dict(
    type='mmws_toy.ImageClassifier',
    # The toy detectors' preprocessing (mmdet's RGB mean/std); the crops are stored as RGB.
    data_preprocessor=dict(
        type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    backbone=dict(
        type='mmdet.ResNet',
        depth=18,
        out_indices=(3, ),
        frozen_stages=-1,
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch'),
    in_channels=512,
    num_classes=5)
