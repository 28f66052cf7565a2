"""Embedded default data: deterministic toy datasets written on first use."""
from .toy_coco import ToyCocoDataset, ensure_toy_coco, write_toy_coco
from .toy_scenes import ToySpec

__all__ = ['ToyCocoDataset', 'ToySpec', 'ensure_toy_coco', 'write_toy_coco']
from .toy_voc import ToyVOCDataset, ensure_toy_voc  # noqa: E402

__all__ += ['ToyVOCDataset', 'ensure_toy_voc']
from .toy_classification import (ToyShapeClassification,  # noqa: E402
                                 ensure_toy_classification)

__all__ += ['ToyShapeClassification', 'ensure_toy_classification']
