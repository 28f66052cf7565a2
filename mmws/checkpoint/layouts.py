"""Source layouts of released GN+WS and BCN+WS ImageNet ResNets, as key-renaming rules.

Each :class:`Layout` maps a source key to its key in the OpenMMLab ``ResNet`` (see
:mod:`mmws.checkpoint.resnet`), or names the reason a tensor is dropped by design (the ImageNet
classifier, optimizer state). Everything else is a leftover the converter reports.

- ``torchvision-bcn``: the authors' BCN+WS ResNets (``rn50_bcn_ws.pth``): torchvision names,
  each ``bnK`` a BCN whose batch part is the child ``pbn`` (``bn`` in the README's ``EstBN``
  variant) and whose channel-part affine ``bnK.weight``/``bnK.bias`` is per group, shape
  ``(1, G, 1)``. Trained with ``σ = sqrt(unbiased var + eps)`` weight standardization.
- ``torchvision-gn``: the authors' GN+WS ResNets in torchvision names (``bnK`` a GroupNorm with
  ``(C,)`` affine). Trained with ``σ = unbiased std + eps``.
- ``detectron-gn``: the same GN+WS weights as the Detectron-style ``.pkl`` of the authors'
  maskrcnn-benchmark fork (``conv1_w``, ``res2_0_branch2a_w``, ``res2_0_branch2a_gn_s``/``_b``,
  ``res2_0_branch1_*`` for the projection shortcut, ``pred_*`` for the classifier). Its blocks
  put the stride in the 3x3 conv (``STRIDE_IN_1X1: False``), as mmdet's ``style='pytorch'``.
"""
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional

#: The WS form each family of released weights was trained with (``ConvWS`` arguments).
CONV_WS_GN = {'type': 'mmws.ConvWS'}
CONV_WS_BCN = {'type': 'mmws.ConvWS', 'eps_inside_sqrt': True}

_TORCHVISION = re.compile(r'^(?P<block>layer[1-4]\.\d+\.)?'
                          r'(?P<module>conv\d|bn\d|downsample\.[01])\.(?P<tensor>.+)$')
_DETECTRON_STEM = re.compile(r'^(?:res_)?conv1_(?P<tensor>w|gn_s|gn_b)$')
_DETECTRON_BLOCK = re.compile(r'^res(?P<stage>[2-5])_(?P<block>\d+)_branch(?P<branch>1|2[abc])_'
                              r'(?P<tensor>w|gn_s|gn_b)$')
_DETECTRON_TENSORS = {'w': 'weight', 'gn_s': 'weight', 'gn_b': 'bias'}
_BCN_BATCH_PART = {'weight': 'bn_weight', 'bias': 'bn_bias', 'running_mean': 'running_mean',
                   'running_var': 'running_var', 'num_batches_tracked': 'num_batches_tracked'}


@dataclass(frozen=True)
class Layout:
    """How one family of source checkpoints names its tensors.

    Attributes:
        name: The layout's name (``--layout`` of the converter).
        norm: ``_abbr_`` of the target norm layers: ``'gn'`` or ``'bcn'``.
        conv_cfg: The ``conv_cfg`` a config must use with the converted weights.
        target_key: ``source key -> target key``, or ``None`` when no rule applies.
        dropped: ``source key -> reason`` for tensors dropped by design, else ``None``.
    """
    name: str
    norm: str
    conv_cfg: Mapping
    target_key: Callable[[str], Optional[str]]
    dropped: Callable[[str], Optional[str]]


def _torchvision_target(key: str, norm: str) -> Optional[str]:
    match = _TORCHVISION.match(key)
    if match is None:
        return None
    block, module, tensor = match.group('block') or '', match.group('module'), match.group('tensor')
    if module.startswith('conv') or module == 'downsample.0':
        return f'{block}{module}.weight' if tensor == 'weight' else None
    target_module = module if module == 'downsample.1' else f'{norm}{module[2:]}'
    if tensor in ('weight', 'bias'):
        return f'{block}{target_module}.{tensor}'
    part, _, name = tensor.partition('.')
    if norm == 'bcn' and part in ('pbn', 'bn') and name in _BCN_BATCH_PART:
        return f'{block}{target_module}.{_BCN_BATCH_PART[name]}'
    return None


def _torchvision_dropped(key: str) -> Optional[str]:
    if key in ('fc.weight', 'fc.bias'):
        return 'ImageNet classifier'
    if key.endswith('.estbn_moving_speed'):
        return ("EstBN's estimate update rate (a training setting): set mmws.BCN's "
                'momentum in the config instead')
    return None


def _detectron_target(key: str) -> Optional[str]:
    stem = _DETECTRON_STEM.match(key)
    if stem is not None:
        module = 'conv1' if stem.group('tensor') == 'w' else 'gn1'
        return f'{module}.{_DETECTRON_TENSORS[stem.group("tensor")]}'
    match = _DETECTRON_BLOCK.match(key)
    if match is None:
        return None
    block = f'layer{int(match.group("stage")) - 1}.{int(match.group("block"))}'
    branch, tensor = match.group('branch'), match.group('tensor')
    is_conv = tensor == 'w'
    if branch == '1':
        module = 'downsample.0' if is_conv else 'downsample.1'
    else:
        index = 'abc'.index(branch[1]) + 1
        module = f'conv{index}' if is_conv else f'gn{index}'
    return f'{block}.{module}.{_DETECTRON_TENSORS[tensor]}'


def _detectron_dropped(key: str) -> Optional[str]:
    if key in ('pred_w', 'pred_b'):
        return 'ImageNet classifier'
    if key.endswith('_momentum'):
        return 'optimizer state'
    return None


LAYOUTS: Dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout('torchvision-bcn', 'bcn', CONV_WS_BCN,
               lambda key: _torchvision_target(key, 'bcn'), _torchvision_dropped),
        Layout('torchvision-gn', 'gn', CONV_WS_GN, lambda key: _torchvision_target(key, 'gn'),
               _torchvision_dropped),
        Layout('detectron-gn', 'gn', CONV_WS_GN, _detectron_target, _detectron_dropped),
    )
}


def detect_layout(keys: Iterable[str]) -> Layout:
    """Recognise the layout of a source state dict from its keys.

    Raises:
        ValueError: For a plain BatchNorm ResNet, or keys of no known layout (a sample of
            them is in the message).
    """
    keys = list(keys)
    if any(_DETECTRON_BLOCK.match(k) or _DETECTRON_STEM.match(k) for k in keys):
        return LAYOUTS['detectron-gn']
    torchvision = [k for k in keys if _TORCHVISION.match(k)]
    if any(re.search(r'(^|\.)(bn\d|downsample\.1)\.(pbn|bn)\.', k) for k in torchvision):
        return LAYOUTS['torchvision-bcn']
    if any(re.search(r'(^|\.)(bn\d|downsample\.1)\.running_mean$', k) for k in torchvision):
        raise ValueError('the source is a BatchNorm ResNet (bnK.running_mean), not GN+WS or '
                         'BCN+WS: no layout converts it')
    if any(k.endswith('bn1.weight') for k in torchvision):
        return LAYOUTS['torchvision-gn']
    raise ValueError(f'unknown checkpoint layout; known: {sorted(LAYOUTS)}; first keys: '
                     f'{keys[:5]}')
