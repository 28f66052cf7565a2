"""Metrics of mmws, registered in :data:`mmws.registry.METRICS` (scope ``mmws``)."""
from .accuracy import Accuracy

__all__ = ['Accuracy']
