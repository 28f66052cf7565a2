"""Metrics of mmws, registered in :data:`mmws.registry.METRICS` (scope ``mmws``)."""
from .class_iou import ClassIoUMetric

__all__ = ['ClassIoUMetric']
