"""The embedded toy VOC semantic-segmentation dataset: writer and ``mmws_toy.ToyVOCDataset``.

The dataset is a deterministic function of its :class:`~mmws_toy.scenes.ToySpec`:
the scenes of :func:`~mmws_toy.scenes.render_scene` (the same ones the toy COCO
dataset of the same spec holds), written in the PASCAL VOC 2012 layout under the root::

    JPEGImages/000000.jpg ...                  RGB images
    SegmentationClass/000000.png ...           palette PNGs: class index per pixel
    ImageSets/Segmentation/{train,val}.txt     image names of each split
    spec.json                                  the spec (written last)

As in VOC, pixels hold ``0`` (background) or ``1 + category``, and a band of ``255``
(ignored by the loss and by ``IoUMetric``) covers every object's outline. Image names carry
the split (``train_000000``), so both splits share one image folder as VOC's do.
"""
import os
import os.path as osp
from typing import Dict, List, Optional

import cv2
import numpy as np
from mmseg.datasets import BaseSegDataset
from PIL import Image

from .registry import DATASETS
from .scenes import CATEGORIES, SPLITS, ToyScene, ToySpec, ensure_dataset

KIND = 'voc'
CLASSES = ('background', ) + CATEGORIES
IGNORE_INDEX = 255


def voc_palette(num_classes: int) -> List[List[int]]:
    """The first ``num_classes`` colours of PASCAL VOC's bit-interleaved colour map."""
    palette = []
    for label in range(num_classes):
        colour, value = [0, 0, 0], label
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette.append(colour)
    return palette


PALETTE = voc_palette(len(CLASSES))


def class_mask(scene: ToyScene, ignore_width: int = 2) -> np.ndarray:
    """The VOC label map of a scene, a ``(H, W)`` uint8 array.

    Each visible object's pixels hold ``1 + category`` (background ``0``); then every pixel
    within the morphological gradient of an object's visible mask (``ignore_width`` pixels
    across its outline, half inside and half outside) becomes :data:`IGNORE_INDEX`.
    """
    if ignore_width < 0:
        raise ValueError(f'ignore_width must be >= 0, got {ignore_width}')
    labels = np.zeros(scene.image.shape[:2], dtype=np.uint8)
    for instance in scene.instances:
        labels[instance.mask] = instance.category + 1
    if ignore_width > 0:
        kernel = np.ones((ignore_width + 1, ignore_width + 1), dtype=np.uint8)
        for instance in scene.instances:
            outline = cv2.morphologyEx(instance.mask.astype(np.uint8), cv2.MORPH_GRADIENT,
                                       kernel)
            labels[outline.astype(bool)] = IGNORE_INDEX
    return labels


def image_name(split: str, index: int) -> str:
    """File stem of image ``index`` of ``split`` (both splits share the image folder)."""
    return f'{split}_{index:06d}'


def write_split(root: str, split: str, spec: ToySpec) -> Dict[str, int]:
    """Write the images, label maps and list file of one split; returns pixel counts."""
    palette = np.asarray(PALETTE + [[255, 255, 255]] * (256 - len(PALETTE)), np.uint8)
    counts = np.zeros(256, dtype=np.int64)
    names = []
    for index in range(spec.num_images(split)):
        scene = spec.scene(split, index)
        name = image_name(split, index)
        cv2.imwrite(osp.join(root, 'JPEGImages', f'{name}.jpg'), scene.image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        labels = class_mask(scene)
        png = Image.fromarray(labels, mode='P')
        png.putpalette(palette.ravel().tolist())
        png.save(osp.join(root, 'SegmentationClass', f'{name}.png'))
        counts += np.bincount(labels.ravel(), minlength=256)
        names.append(name)
    with open(osp.join(root, 'ImageSets', 'Segmentation', f'{split}.txt'), 'w') as f:
        f.write('\n'.join(names) + '\n')
    pixels = {name: int(counts[label]) for label, name in enumerate(CLASSES)}
    return dict(images=len(names), ignored=int(counts[IGNORE_INDEX]), **pixels)


def dataset_files(spec: ToySpec) -> List[str]:
    """Every file the dataset of ``spec`` holds besides its record, relative to the root."""
    files = []
    for split in SPLITS:
        names = [image_name(split, index) for index in range(spec.num_images(split))]
        files += [f'ImageSets/Segmentation/{split}.txt']
        files += [f'JPEGImages/{name}.jpg' for name in names]
        files += [f'SegmentationClass/{name}.png' for name in names]
    return files


def write_voc_files(root: str, spec: ToySpec) -> Dict[str, Dict[str, int]]:
    """Write both splits' files into ``root``; returns per-split counts."""
    for folder in ('JPEGImages', 'SegmentationClass', osp.join('ImageSets', 'Segmentation')):
        os.makedirs(osp.join(root, folder), exist_ok=True)
    return {split: write_split(root, split, spec) for split in SPLITS}


def ensure_toy_voc(root: str, spec: ToySpec = ToySpec()) -> bool:
    """Write the dataset to ``root`` unless it is complete (see
    :func:`~mmws_toy.scenes.ensure_dataset`); returns whether it wrote."""
    return ensure_dataset(root, spec, KIND, write_voc_files, dataset_files)


@DATASETS.register_module()
class ToyVOCDataset(BaseSegDataset):
    """A VOC-format semantic-segmentation dataset of toy shapes, written on first use.

    Reads like mmseg's ``PascalVOCDataset`` (``.jpg`` images, ``.png`` label maps, a split
    list as ``ann_file``), with the toy classes ``background, circle, square, triangle,
    star`` and VOC's colours; ``255`` is ignored. When ``data_root`` holds no complete dataset
    it is written there first (safe under concurrent ranks).

    Args:
        spec: Keyword arguments of :class:`~mmws_toy.scenes.ToySpec` used when the
            data must be written; an existing dataset must match it.
        **kwargs: As ``BaseSegDataset`` (``data_root``, ``data_prefix``, ``ann_file``,
            ``pipeline``, ...).
    """

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, *args, spec: Optional[dict] = None, **kwargs) -> None:
        self.spec = ToySpec(**(spec or {}))
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        if self.data_root is None:
            raise ValueError('ToyVOCDataset needs a data_root to write the toy data to')
        ensure_toy_voc(self.data_root, self.spec)
        return super().load_data_list()
