"""Layers of mmws, registered in :data:`mmws.registry.MODELS` (scope ``mmws``)."""
from .bcn import BCN
from .conv_ws import ConvWS

__all__ = ['BCN', 'ConvWS']
