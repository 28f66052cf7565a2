"""The embedded toy COCO instance-segmentation dataset: writer and ``mmws_toy.ToyCocoDataset``.

The dataset is a deterministic function of its :class:`~mmws_toy.scenes.ToySpec`:
the scenes of :func:`~mmws_toy.scenes.render_scene` (the same ones the toy VOC dataset
of the same spec holds), JPEG images and COCO annotations with RLE masks of the visible pixels.
It is written on first use, so a config that names ``mmws_toy.ToyCocoDataset`` (or mmdet's own
tools on such a config) works on a fresh machine. Layout under the root::

    annotations/instances_train.json   annotations/instances_val.json
    train/000000.jpg ...               val/000000.jpg ...
    spec.json                          the spec (written last)
"""
import json
import os
import os.path as osp
from typing import Dict, List

import cv2
import numpy as np
from mmdet.datasets import CocoDataset
from pycocotools import mask as mask_utils

from .registry import DATASETS
from .scenes import CATEGORIES, SPLITS, ToyScene, ToySpec, ensure_dataset, write_dataset

KIND = 'coco'


def ann_file(split: str) -> str:
    """Annotation path of a split, relative to the dataset root."""
    return f'annotations/instances_{split}.json'


def scene_annotations(scene: ToyScene, image_id: int, first_ann_id: int) -> List[dict]:
    """COCO annotations (RLE of the visible mask, its box and area) of a scene's instances."""
    annotations = []
    for offset, instance in enumerate(scene.instances):
        rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
        annotations.append(
            dict(id=first_ann_id + offset,
                 image_id=image_id,
                 category_id=instance.category + 1,
                 segmentation=dict(size=rle['size'], counts=rle['counts'].decode('ascii')),
                 area=float(mask_utils.area(rle)),
                 bbox=[float(v) for v in mask_utils.toBbox(rle)],
                 iscrowd=0))
    return annotations


def write_split(root: str, split: str, spec: ToySpec) -> Dict[str, int]:
    """Write the images and the annotation file of one split; returns image/object counts."""
    os.makedirs(osp.join(root, split), exist_ok=True)
    images, annotations = [], []
    for index in range(spec.num_images(split)):
        scene = spec.scene(split, index)
        file_name = f'{index:06d}.jpg'
        cv2.imwrite(osp.join(root, split, file_name), scene.image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, height=spec.size[0],
                           width=spec.size[1]))
        annotations += scene_annotations(scene, image_id, len(annotations) + 1)
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CATEGORIES)]
    coco = dict(info=dict(description=f'mmws toy COCO ({split})', spec=spec.record(KIND)),
                images=images, annotations=annotations, categories=categories)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    with open(osp.join(root, ann_file(split)), 'w') as f:
        json.dump(coco, f)
    return dict(images=len(images), objects=len(annotations))


def dataset_files(spec: ToySpec) -> List[str]:
    """Every file the dataset of ``spec`` holds besides its record, relative to the root."""
    return [ann_file(split) for split in SPLITS] + [
        f'{split}/{index:06d}.jpg' for split in SPLITS for index in range(spec.num_images(split))]


def write_splits(root: str, spec: ToySpec) -> Dict[str, Dict[str, int]]:
    return {split: write_split(root, split, spec) for split in SPLITS}


def write_toy_coco(root: str, spec: ToySpec = ToySpec()) -> Dict[str, Dict[str, int]]:
    """Write the dataset into ``root`` in place; returns the image/object counts per split."""
    return write_dataset(root, spec, KIND, write_splits)


def ensure_toy_coco(root: str, spec: ToySpec = ToySpec()) -> bool:
    """Write the dataset to ``root`` unless it is complete; returns whether it wrote.

    Atomic and safe for concurrent ranks (see
    :func:`~mmws_toy.scenes.ensure_dataset`, which also states the errors).
    """
    return ensure_dataset(root, spec, KIND, write_splits, dataset_files)


@DATASETS.register_module()
class ToyCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` on the toy shapes, written under ``data_root`` on first use.

    Args:
        spec: Keyword arguments of :class:`~mmws_toy.scenes.ToySpec`: the dataset
            to write if ``data_root`` is empty, or to check an existing one against.
        **kwargs: As ``CocoDataset`` (``data_root``, ``ann_file``, ``data_prefix``, ...).
    """

    METAINFO = dict(classes=CATEGORIES,
                    palette=[(220, 20, 60), (0, 128, 255), (0, 192, 0), (255, 160, 0)])

    def __init__(self, *args, spec: dict = None, **kwargs) -> None:
        self.spec = ToySpec(**(spec or {}))
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        ensure_toy_coco(self.data_root, self.spec)
        return super().load_data_list()
