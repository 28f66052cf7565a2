"""mmws: Weight Standardization and Batch-Channel Normalization for OpenMMLab toolboxes.

``import mmws`` (or ``custom_imports=dict(imports=['mmws'])`` in a config) registers
``mmws.ConvWS`` and ``mmws.BCN`` under the registry scope ``mmws`` (the toy datasets
``mmws.ToyCocoDataset`` / ``mmws.ToyVOCDataset`` are imported on first lookup).
"""
from .fuse import fuse
from .models import BCN, ConvWS
from .version import __version__

__all__ = ['BCN', 'ConvWS', 'fuse', '__version__']
