"""The embedded toy classification dataset (a toy "ImageNet"): writer and
``mmws_toy.ToyShapeClassification``.

Square crops of the toy scenes of :func:`~mmws_toy.scenes.render_scene`, in five
classes: ``background`` and the four shapes. Pretraining a backbone on it and fine-tuning the
toy detector from that backbone mirrors the paper's ImageNet-then-COCO recipe.

Image ``i`` of a split has class ``i % 5`` (balanced classes) and is a deterministic function of
``RandomState(spec.image_seed(split, i))``:

- a shape class: scenes (``max_objects`` shapes, :data:`SCENE_SIZE`) are drawn until one holds
  a visible instance of the class whose crop is *clean* (other annotated shapes cover at most
  half as many pixels of the crop as the instance); the crop is a square centred on the
  instance's box, ``U(1.1, 1.5)`` times its longer side (shapes are 13-40 px in radius, so the
  crop scale varies as objects' scale does in the detection scenes);
- background: a scene with one shape, and a square of the same size range placed where it
  holds no pixel of that shape.

Crops are resized to ``spec.size`` (linear interpolation; reflected beyond the scene border).
Both splits are written, on first use, as ``{train,val}.npz`` (``images``: ``(N, H, W, 3)``
uint8 RGB, ``labels``: ``(N,)`` int64) plus ``spec.json`` under the root.
"""
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from mmengine.dataset import BaseDataset

from .registry import DATASETS, TRANSFORMS
from .scenes import CATEGORIES, SPLITS, ToyInstance, ToySpec, ensure_dataset, render_scene

KIND = 'classification'
CLASSES = ('background', ) + CATEGORIES
SCENE_SIZE = (160, 160)  # the toy detection scenes' size
CROP_SCALE = (1.1, 1.5)  # crop side / the instance box's longer side
MAX_SCENES = 1000  # per image: a safety bound, never reached in practice
# Disjoint from the toy detection data's seeds (0 + index, 1_000_003 + index).
DEFAULT_SPEC = dict(num_train=2500, num_val=500, size=(64, 64), max_objects=4, seed=2_000_000)


def crop_square(image: np.ndarray, center: Tuple[float, float], side: float,
                size: Tuple[int, int]) -> np.ndarray:
    """The square of ``side`` px centred at ``center`` (x, y), resized to ``size`` (h, w)."""
    height, width = size
    scale_x, scale_y = width / side, height / side
    matrix = np.array([[scale_x, 0, width / 2 - scale_x * center[0]],
                       [0, scale_y, height / 2 - scale_y * center[1]]], dtype=np.float64)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _object_crop(rng: np.random.RandomState, instance: ToyInstance,
                 others: List[ToyInstance]) -> Optional[Tuple[Tuple[float, float], float]]:
    """Centre and side of a clean crop around ``instance``, or ``None`` if it is not clean."""
    ys, xs = np.nonzero(instance.mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = rng.uniform(*CROP_SCALE) * max(x1 - x0, y1 - y0)
    center = ((x0 + x1) / 2, (y0 + y1) / 2)
    box = _window(center, side, instance.mask.shape)
    own = instance.mask[box].sum()
    foreign = sum(other.mask[box].sum() for other in others)
    return (center, side) if foreign <= 0.5 * own else None


def _window(center: Tuple[float, float], side: float,
            shape: Tuple[int, int]) -> Tuple[slice, slice]:
    """The part of a square window that lies inside an image of ``shape``, as slices."""
    half = side / 2
    return (slice(max(int(center[1] - half), 0), min(int(np.ceil(center[1] + half)), shape[0])),
            slice(max(int(center[0] - half), 0), min(int(np.ceil(center[0] + half)), shape[1])))


def render_crop(rng: np.random.RandomState, label: int, spec: ToySpec) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 RGB crop of class ``CLASSES[label]`` (see the module docstring).

    Raises:
        RuntimeError: No clean crop within :data:`MAX_SCENES` scenes.
    """
    for _ in range(MAX_SCENES):
        if label == 0:
            scene = render_scene(rng, SCENE_SIZE, max_objects=1)
            # The shape's full mask: a single shape is never occluded, so it is annotated.
            shape_mask = scene.instances[0].mask
            side = rng.uniform(*CROP_SCALE) * rng.uniform(0.16, 0.5) * min(SCENE_SIZE)
            center = (rng.uniform(side / 2, SCENE_SIZE[1] - side / 2),
                      rng.uniform(side / 2, SCENE_SIZE[0] - side / 2))
            if not shape_mask[_window(center, side, SCENE_SIZE)].any():
                return crop_square(scene.image, center, side, spec.size)
            continue
        scene = render_scene(rng, SCENE_SIZE, spec.max_objects)
        for index, instance in enumerate(scene.instances):
            if instance.category + 1 != label:
                continue
            others = scene.instances[:index] + scene.instances[index + 1:]
            crop = _object_crop(rng, instance, others)
            if crop is not None:
                return crop_square(scene.image, *crop, spec.size)
    raise RuntimeError(f'no clean {CLASSES[label]!r} crop in {MAX_SCENES} scenes')


def render_split(spec: ToySpec, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a split: ``(N, H, W, 3)`` uint8 and ``(N,)`` int64."""
    count = spec.num_images(split)
    labels = np.arange(count, dtype=np.int64) % len(CLASSES)
    images = np.stack([
        render_crop(np.random.RandomState(spec.image_seed(split, index)), int(label), spec)
        for index, label in enumerate(labels)
    ])
    return images, labels


def dataset_files(spec: ToySpec) -> List[str]:
    """Every file the dataset holds besides its record, relative to the root."""
    return [f'{split}.npz' for split in SPLITS]


def write_splits(root: str, spec: ToySpec) -> Dict[str, int]:
    """Write ``{train,val}.npz`` into ``root``; returns the image count per split."""
    counts = {}
    for split in SPLITS:
        images, labels = render_split(spec, split)
        np.savez(osp.join(root, f'{split}.npz'), images=images, labels=labels)
        counts[split] = len(labels)
    return counts


def ensure_toy_classification(root: str, spec: ToySpec = ToySpec(**DEFAULT_SPEC)) -> bool:
    """Write the dataset to ``root`` unless it is complete; returns whether it wrote.

    Atomic and safe for concurrent ranks (see
    :func:`~mmws_toy.scenes.ensure_dataset`, which also states the errors).
    """
    return ensure_dataset(root, spec, KIND, write_splits, dataset_files)


@DATASETS.register_module()
class ToyShapeClassification(BaseDataset):
    """Crops of toy shapes and background in five classes, written under ``data_root`` on
    first use.

    Each sample is ``dict(img=(H, W, 3) uint8 RGB array, gt_label=int, img_shape=(H, W))``
    before the pipeline.

    Args:
        split: ``'train'`` or ``'val'``.
        spec: Keyword arguments of :class:`~mmws_toy.scenes.ToySpec` overriding
            :data:`DEFAULT_SPEC` (``num_train``/``num_val`` count images of all classes,
            ``size`` is the crop size): the dataset to write if ``data_root`` is empty, or to
            check an existing one against.
        **kwargs: As MMEngine's ``BaseDataset`` (``data_root``, ``pipeline``, ...).
    """

    METAINFO = dict(classes=CLASSES)

    def __init__(self, *args, split: str = 'train', spec: Optional[dict] = None,
                 **kwargs) -> None:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        self.split = split
        self.spec = ToySpec(**{**DEFAULT_SPEC, **(spec or {})})
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        if not self.data_root:
            raise ValueError('ToyShapeClassification needs a data_root to write the data to')
        ensure_toy_classification(self.data_root, self.spec)
        with np.load(osp.join(self.data_root, f'{self.split}.npz')) as data:
            images, labels = data['images'], data['labels']
        return [dict(img=image, gt_label=int(label), img_shape=image.shape[:2])
                for image, label in zip(images, labels)]


@TRANSFORMS.register_module()
class PackClsInputs:
    """Pack a classification sample: ``inputs`` a ``(3, H, W)`` uint8 tensor, ``data_samples``
    the label as a 0-d int64 tensor (the form :class:`~mmws_toy.classifier.ImageClassifier`
    and :class:`~mmws.evaluation.Accuracy` read)."""

    def __call__(self, results: dict) -> dict:
        image = np.ascontiguousarray(results['img'].transpose(2, 0, 1))
        return dict(inputs=torch.from_numpy(image),
                    data_samples=torch.tensor(results['gt_label'], dtype=torch.int64))

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'
