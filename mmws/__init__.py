"""mmws: Weight Standardization and Batch-Channel Normalization for OpenMMLab toolboxes.

``import mmws`` (or ``custom_imports=dict(imports=['mmws'])`` in a config) registers
``mmws.ConvWS``, ``mmws.BCN``, the hooks (``mmws.PreciseBCNHook``, ``mmws.BCNMomentumHook``,
``mmws.MetricsFileHook``) and ``mmws.ClassIoUMetric`` under the registry scope ``mmws``.
"""
from .fuse import fuse
from .hooks import BCNMomentumHook, MetricsFileHook, PreciseBCNHook
from .models import BCN, ConvWS
from .version import __version__

__all__ = [
    'BCN', 'BCNMomentumHook', 'ConvWS', 'MetricsFileHook', 'PreciseBCNHook', 'fuse', '__version__'
]
