"""Checkpoints: safe loading (:mod:`.safe_load`) and conversion of released GN+WS / BCN+WS
ImageNet ResNets to OpenMMLab backbones."""
from .convert import (ConversionError, ConversionReport, convert_checkpoint,
                      convert_state_dict, load_source, unwrap_state_dict)
from .layouts import LAYOUTS, Layout, detect_layout
from .resnet import RESNET_ARCHS, resnet_template
from .safe_load import (SAFE_GLOBALS, CheckpointError, UnsafeCheckpointError,
                        load_checkpoint_file, load_pickle_file, safe_loading)

__all__ = [
    'CheckpointError', 'ConversionError', 'ConversionReport', 'LAYOUTS', 'Layout',
    'RESNET_ARCHS', 'SAFE_GLOBALS', 'UnsafeCheckpointError', 'convert_checkpoint',
    'convert_state_dict', 'detect_layout', 'load_checkpoint_file', 'load_pickle_file',
    'load_source', 'resnet_template', 'safe_loading', 'unwrap_state_dict'
]
