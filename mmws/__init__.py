"""mmws: Weight Standardization and Batch-Channel Normalization for OpenMMLab toolboxes.

``import mmws`` (or ``custom_imports=dict(imports=['mmws'])`` in a config) registers
``mmws.ConvWS``, ``mmws.BCN`` and the hooks under the registry scope ``mmws``.
"""
from .models import BCN, ConvWS
from .version import __version__

__all__ = ['BCN', 'ConvWS', '__version__']
