"""Deterministic scenes of textured shapes: the embedded default data of mmws.

Each scene is an RGB image on a noisy gradient background with a few shapes of several
categories, drawn in random order (so later shapes occlude earlier ones), with random size,
position, rotation, colour and texture (flat, stripes, checks, noise). Both toy datasets
(COCO instances, VOC semantic segmentation) are written from these scenes; the category is
given by the shape alone, so a detector or segmenter must learn shape, not colour.

:class:`ToySpec` fixes which scenes a dataset holds; :func:`ensure_dataset` writes a dataset
of any format on first use, atomically, and records the spec so a later use can check it (the
spec and every file it implies: a deleted or emptied file makes it write the dataset again).
"""
import json
import logging
import os
import os.path as osp
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmengine.logging import print_log

CATEGORIES = ('circle', 'square', 'triangle', 'star')
TEXTURES = ('flat', 'stripes', 'checks', 'noise')


@dataclass
class ToyInstance:
    """One visible object of a scene.

    Attributes:
        category: Index into :data:`CATEGORIES`.
        mask: Visible (unoccluded) pixels, bool array of shape ``(H, W)``.
    """
    category: int
    mask: np.ndarray


@dataclass
class ToyScene:
    """An image and its visible objects, in drawing order."""
    image: np.ndarray  # (H, W, 3) uint8, RGB
    instances: List[ToyInstance]


def _outline(category: int, center: Tuple[float, float], radius: float,
             angle: float) -> np.ndarray:
    """Vertices of a shape as an ``(K, 1, 2)`` int32 array for ``cv2.fillPoly``."""
    if category == 0:  # circle
        thetas = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radii = np.full_like(thetas, radius)
    elif category == 1:  # square
        thetas = np.arange(4) * np.pi / 2 + np.pi / 4
        radii = np.full(4, radius)
    elif category == 2:  # triangle
        thetas = np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, radius)
    else:  # five-pointed star
        thetas = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    thetas = thetas + angle
    points = np.stack([center[0] + radii * np.cos(thetas), center[1] + radii * np.sin(thetas)],
                      axis=1)
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def _texture(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    """A ``(H, W, 3)`` float image in [0, 255]: a colour modulated by a random texture."""
    colour = rng.uniform(30, 255, size=3)
    kind = TEXTURES[rng.randint(len(TEXTURES))]
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == 'flat':
        pattern = np.ones((height, width))
    elif kind == 'stripes':
        period, angle = rng.uniform(4, 10), rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        pattern = 0.65 + 0.35 * np.sign(np.sin(2 * np.pi * phase))
    elif kind == 'checks':
        cell = rng.randint(3, 8)
        pattern = 0.6 + 0.4 * (((xx // cell) + (yy // cell)) % 2)
    else:
        pattern = rng.uniform(0.5, 1.0, size=(height, width))
    return pattern[..., None] * colour


def render_scene(rng: np.random.RandomState,
                 size: Tuple[int, int] = (160, 160),
                 max_objects: int = 4,
                 min_visible_fraction: float = 0.3) -> ToyScene:
    """Draw one scene.

    Args:
        rng: Source of randomness (the scene is a deterministic function of its state).
        size: ``(height, width)`` of the image.
        max_objects: At most this many shapes (at least one is drawn).
        min_visible_fraction: Shapes occluded beyond this fraction of their area are dropped
            from the annotations (their pixels stay in the image).

    Returns:
        The scene, with each instance's visible mask.
    """
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    low, high = rng.uniform(40, 200, size=3), rng.uniform(40, 200, size=3)
    ramp = (xx / width * np.cos(rng.uniform(0, 2 * np.pi)) +
            yy / height * np.sin(rng.uniform(0, 2 * np.pi)))[..., None]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    image = low + (high - low) * ramp + rng.normal(0, 8, size=(height, width, 3))

    owner = np.full((height, width), -1, dtype=np.int64)
    drawn = []  # (category, full mask)
    for index in range(rng.randint(1, max_objects + 1)):
        category = rng.randint(len(CATEGORIES))
        radius = rng.uniform(0.08, 0.25) * min(height, width)
        center = (rng.uniform(radius * 0.6, width - radius * 0.6),
                  rng.uniform(radius * 0.6, height - radius * 0.6))
        full = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(full, [_outline(category, center, radius, rng.uniform(0, 2 * np.pi))], 1)
        full = full.astype(bool)
        image[full] = _texture(rng, height, width)[full]
        owner[full] = index
        drawn.append((category, full))

    instances = []
    for index, (category, full) in enumerate(drawn):
        visible = owner == index
        if visible.sum() >= max(min_visible_fraction * full.sum(), 16):
            instances.append(ToyInstance(category, visible))
    return ToyScene(np.clip(image, 0, 255).astype(np.uint8), instances)


SPLITS = ('train', 'val')
SPEC_FILE = 'spec.json'


@dataclass(frozen=True)
class ToySpec:
    """What a written toy dataset contains; its root's ``spec.json`` records it.

    Attributes:
        num_train: Number of training images.
        num_val: Number of validation images.
        size: ``(height, width)`` of every image.
        max_objects: At most this many shapes per image.
        seed: Base seed; image ``i`` of split ``s`` draws from ``RandomState(seed + offset_s + i)``.
    """
    num_train: int = 400
    num_val: int = 80
    size: tuple = (160, 160)
    max_objects: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f'{name} needs at least one image per split, got '
                             f'num_train={self.num_train}, num_val={self.num_val}')
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError(f'{name} size must be (height, width) >= 32, got {self.size}')
        if self.max_objects < 1:
            raise ValueError(f'{name} max_objects must be >= 1, got {self.max_objects}')

    def num_images(self, split: str) -> int:
        return {'train': self.num_train, 'val': self.num_val}[split]

    def image_seed(self, split: str, index: int) -> int:
        # Disjoint seed ranges per split, so train and val never share a scene.
        return self.seed + SPLITS.index(split) * 1_000_003 + index

    def scene(self, split: str, index: int) -> ToyScene:
        """Scene ``index`` of ``split`` (the same for every dataset format of this spec)."""
        return render_scene(np.random.RandomState(self.image_seed(split, index)),
                            tuple(self.size), self.max_objects)

    def record(self, kind: str) -> dict:
        """The JSON record of a dataset of format ``kind`` written with this spec."""
        return dict(asdict(self), size=list(self.size), kind=kind)


def read_record(root: str) -> Optional[dict]:
    """The record of the complete dataset under ``root``, or ``None`` if there is none."""
    path = osp.join(root, SPEC_FILE)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_dataset(root: str, spec: ToySpec, kind: str,
                  write: Callable[[str, ToySpec], Any]) -> Any:
    """Write a dataset into ``root`` in place with ``write(root, spec)``, then its record.

    The record is written last: its presence marks a complete dataset. Returns what ``write``
    returns.
    """
    os.makedirs(root, exist_ok=True)
    result = write(root, spec)
    with open(osp.join(root, SPEC_FILE), 'w') as f:
        json.dump(spec.record(kind), f)
    return result


def missing_files(root: str, files: Sequence[str]) -> List[str]:
    """Those of ``files`` (paths relative to ``root``) that are absent or empty."""
    return [name for name in files
            if not osp.isfile(osp.join(root, name)) or osp.getsize(osp.join(root, name)) == 0]


def _discard(root: str, files: Sequence[str]) -> None:
    """Remove the incomplete dataset ``root``, safely when several processes do it at once.

    It is first renamed into a private directory (atomic: of several processes only one moves
    it). If what was moved turns out complete (another process had rewritten ``root`` between
    this one's check and its rename), it is put back unless ``root`` exists again.
    """
    parent = osp.dirname(osp.abspath(root))
    trash = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(root))}-incomplete-',
                             dir=parent)
    moved = osp.join(trash, 'dataset')
    try:
        os.rename(root, moved)
        if read_record(moved) is not None and not missing_files(moved, files):
            os.rename(moved, root)
    except OSError:  # root gone (another process moved it first) or back in place already
        pass
    finally:
        shutil.rmtree(trash)


def ensure_dataset(root: str, spec: ToySpec, kind: str, write: Callable[[str, ToySpec], Any],
                   files: Callable[[ToySpec], List[str]]) -> bool:
    """Write a dataset to ``root`` unless it is already complete; returns whether it wrote.

    Complete means: ``root``'s record is ``spec``'s and every file of ``files(spec)`` is there
    and not empty. A dataset of this spec with a file missing is written again, with a warning
    naming the file. Safe under concurrency (several ranks or workers at once): each writer
    fills a private temporary directory beside ``root`` and renames it into place atomically; a
    writer that loses the race discards its copy.

    Args:
        root: Dataset directory.
        spec: What the dataset must contain.
        kind: Format name recorded with the spec (``'coco'``, ``'voc'``).
        write: ``write(directory, spec)`` writes the dataset's files into ``directory``.
        files: ``files(spec)``: the paths, relative to the root, that ``write`` writes.

    Raises:
        FileExistsError: ``root`` exists but holds no toy dataset (not ours to delete).
        ValueError: ``root`` holds a dataset of another format or spec.
    """
    record = read_record(root)
    if record is not None:
        if record != spec.record(kind):
            raise ValueError(f'{root!r} holds a toy dataset written as {record}, not the '
                             f'requested {spec.record(kind)}; remove it or change data_root')
        expected = files(spec)
        missing = missing_files(root, expected)
        if not missing:
            return False
        print_log(f'{osp.abspath(root)} holds the toy {kind} dataset of this spec, but '
                  f'{len(missing)} of its {len(expected)} files are missing or empty (the first: '
                  f'{missing[0]}): writing it again', logger='current', level=logging.WARNING)
        _discard(root, expected)
    elif osp.exists(root) and os.listdir(root):
        raise FileExistsError(f'{root!r} exists but is not a complete toy dataset (no '
                              f'{SPEC_FILE}); remove it to regenerate')
    parent = osp.dirname(osp.abspath(root))
    os.makedirs(parent, exist_ok=True)
    print_log(f'writing the toy {kind} dataset to {osp.abspath(root)}', logger='current')
    staging = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(root))}-', dir=parent)
    try:
        write_dataset(staging, spec, kind, write)
        if osp.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(staging, root)
        except OSError:
            if read_record(root) is None:  # not a lost race: a real error
                raise
            return False
    finally:
        if osp.exists(staging):
            shutil.rmtree(staging)
    return True
