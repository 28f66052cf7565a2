# PASCAL VOC 2012 + SBD aug (mmseg's layout and image lists) with the authors' augmentation
# (github.com/chenxi116/DeepLabv3.pytorch: pascal.py at commit ea1ab3f, utils.py at 7842ad3,
# cited as file:line): random scale 0.5-2.0, flip, a 513 crop, no photometric distortion
# (pascal.py:48-51, utils.py:58-89); evaluation on the whole image, zero-padded to 513 x 513
# (pascal.py:48-51 with train=False; VOC images are at most 500 px): no resize. The pad to 513
# (label 255) is the model's data_preprocessor's, in training and evaluation.
# Left: the authors draw the scale log-uniformly in [0.5, 2] (utils.py:65-66: mean 1.08),
# mmcv's RandomResize uniformly (mean 1.25: more upscaled crops), and resize with PIL's
# antialiasing filter (utils.py:68) where mmcv uses cv2's bilinear; expected well under 0.5 mIoU,
# not measured. scale=(500, 500) with keep_ratio sets the long side to 500 x ratio: the
# authors' factor for every VOC image whose long side is 500 (nearly all).
_base_ = 'mmseg::_base_/datasets/pascal_voc12_aug.py'

crop_size = (513, 513)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(500, 500), ratio_range=(0.5, 2.0), keep_ratio=True),
    # A crop anywhere (no class-ratio retries) where the image is larger than 513, then the pad:
    # the authors pad first and crop at random, the same crops (utils.py:78-89).
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
dataset_train = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/train.txt',
    pipeline=train_pipeline)
dataset_aug = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
    ann_file='ImageSets/Segmentation/aug.txt',
    pipeline=train_pipeline)
# 8 GPUs x 2 images; the 16xb1 configs set batch_size=1.
train_dataloader = dict(
    batch_size=2, dataset=dict(type='ConcatDataset', datasets=[dataset_train, dataset_aug]))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
