"""mmws: Weight Standardization and Batch-Channel Normalization for OpenMMLab toolboxes.

``import mmws`` (or ``custom_imports=dict(imports=['mmws'])`` in a config) registers
``mmws.ConvWS``, ``mmws.BCN`` and the hooks ``mmws.PreciseBCNHook`` / ``mmws.BCNMomentumHook``
under the registry scope ``mmws`` (the toy datasets ``mmws.ToyCocoDataset`` /
``mmws.ToyVOCDataset`` are imported on first lookup).
"""
from .fuse import fuse
from .hooks import BCNMomentumHook, PreciseBCNHook
from .models import BCN, ConvWS
from .version import __version__

__all__ = ['BCN', 'BCNMomentumHook', 'ConvWS', 'PreciseBCNHook', 'fuse', '__version__']
