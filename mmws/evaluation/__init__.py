"""Metrics of mmws, registered in :data:`mmws.registry.METRICS` (scope ``mmws``)."""
from .accuracy import Accuracy
from .class_iou import ClassIoUMetric

__all__ = ['Accuracy', 'ClassIoUMetric']
