"""Checkpoint conversion: released GN+WS / BCN+WS ImageNet ResNets to OpenMMLab backbones."""
from .convert import (ConversionError, ConversionReport, convert_checkpoint,
                      convert_state_dict, load_source, unwrap_state_dict)
from .layouts import LAYOUTS, Layout, detect_layout
from .resnet import RESNET_ARCHS, resnet_template

__all__ = [
    'ConversionError', 'ConversionReport', 'LAYOUTS', 'Layout', 'RESNET_ARCHS',
    'convert_checkpoint', 'convert_state_dict', 'detect_layout', 'load_source',
    'resnet_template', 'unwrap_state_dict'
]
