"""Deterministic scenes of textured shapes: the embedded default data of mmws.

Each scene is an RGB image on a noisy gradient background with a few shapes of several
categories, drawn in random order (so later shapes occlude earlier ones), with random size,
position, rotation, colour and texture (flat, stripes, checks, noise). Both toy datasets
(COCO instances, VOC semantic segmentation) are written from these scenes; the category is
given by the shape alone, so a detector or segmenter must learn shape, not colour.
"""
from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

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
