"""The toy lab of mmws: embedded synthetic data and the small models that train on it.

``custom_imports=dict(imports=['mmws', 'mmws_toy'])`` (or the ``mmws_toy.`` prefix) registers
the toy datasets ``mmws_toy.ToyCocoDataset`` / ``mmws_toy.ToyVOCDataset`` /
``mmws_toy.ToyShapeClassification``, the transform ``mmws_toy.PackClsInputs``, the classifier
``mmws_toy.ImageClassifier`` and its metric ``mmws_toy.Accuracy``.
"""
from .accuracy import Accuracy
from .classification import ToyShapeClassification, ensure_toy_classification
from .classifier import ImageClassifier
from .coco import ToyCocoDataset, ensure_toy_coco, write_toy_coco
from .scenes import ToySpec
from .voc import ToyVOCDataset, ensure_toy_voc

__all__ = [
    'Accuracy', 'ImageClassifier', 'ToyCocoDataset', 'ToySpec', 'ToyShapeClassification',
    'ToyVOCDataset', 'ensure_toy_classification', 'ensure_toy_coco', 'ensure_toy_voc',
    'write_toy_coco'
]
