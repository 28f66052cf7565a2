# The embedded toy VOC dataset (mmws_toy.ToyVOCDataset): 160x160 scenes of four shape classes,
# written to data/toy_voc of this repository on first use; evaluated with mmseg's IoUMetric
# (aAcc, mIoU, mAcc; per class IoU.<class> too, through mmws.ClassIoUMetric).
# Training sees whole images, flipped at random: no resize or crop, so training and test see
# the same geometry (crops of a 160 px scene cut most shapes, which then cannot be told apart).
dataset_type = 'mmws_toy.ToyVOCDataset'
# Anchored at the repository (not the working directory): every run finds the same data.
data_root = '{{fileDirname}}/../../../../../data/toy_voc'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
data_prefix = dict(img_path='JPEGImages', seg_map_path='SegmentationClass')
train_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=data_prefix,
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=data_prefix,
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='mmws.ClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
