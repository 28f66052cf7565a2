"""Checks that a checkpoint fits the mmws layer it is loaded into, warning when it does not.

MMEngine's ``load_checkpoint`` and its ``Pretrained`` init load with ``strict=False`` and only
log the keys that did not match. A BatchNorm ImageNet checkpoint (``torchvision://resnet50``)
loaded into a BCN+WS or GN+WS backbone then trains from a broken start without a word: the
BCN layers keep their initial tensors, and WS changes what the BN-trained convs compute.

``BCN._load_from_state_dict`` and ``ConvWS._load_from_state_dict`` call the checks below.
Both loaders (``torch.nn.Module.load_state_dict`` and MMEngine's ``load_state_dict``) walk the
model top-down and hand each module only the keys under its own ``prefix``; the keys the
module's ancestors found no module for are already in the load's shared ``unexpected_keys``
list, so a layer can still see what the checkpoint holds beside it (a BatchNorm's ``bn1.*``
where the model has ``bcn1``).

The warnings are :class:`CheckpointMismatchWarning`; turn them into errors with
``warnings.simplefilter('error', CheckpointMismatchWarning)``.
"""
import re
import warnings
from typing import Mapping, Optional, Sequence, Tuple

#: The tensors a BCN checkpoint must hold (``num_batches_tracked`` may be absent: see
#: ``BCN._load_from_state_dict``).
BCN_KEYS = ('weight', 'bias', 'bn_weight', 'bn_bias', 'running_mean', 'running_var')

CONVERT = 'tools/convert_checkpoint.py'
FROM_SCRATCH = 'train from scratch (backbone init_cfg=None, frozen_stages=-1)'


class CheckpointMismatchWarning(UserWarning):
    """A checkpoint does not hold what an mmws layer needs, or was trained for another layer."""


def _split(prefix: str) -> Tuple[str, str]:
    """``'layer1.0.bcn1.'`` -> ``('layer1.0.', 'bcn1')``."""
    parent, _, name = prefix[:-1].rpartition('.')
    return (parent + '.' if parent else ''), name


def _norm_kind(keys: Sequence[str], prefix: str) -> Optional[str]:
    """What the checkpoint ``keys`` hold under ``prefix``: ``'bcn'`` (mmws BCN),
    ``'authors-bcn'`` (the authors' unconverted BCN: batch part as a ``pbn``/``bn`` child),
    ``'batchnorm'``, ``'affine'`` (GroupNorm and the like) or ``None`` (no norm tensors)."""
    present = {key[len(prefix):] for key in keys if key.startswith(prefix)}
    if 'bn_weight' in present:
        return 'bcn'
    if {'pbn.running_var', 'bn.running_var'} & present:
        return 'authors-bcn'
    if 'running_var' in present:
        return 'batchnorm'
    if 'weight' in present:
        return 'affine'
    return None


def _unused_siblings(unexpected_keys: Sequence[str], prefix: str) -> dict:
    """``{sibling prefix: kind}`` of the norm tensors the load found no module for, next to the
    module at ``prefix``; the sibling with the module's trailing number (``bn1`` for ``bcn1``)
    first."""
    parent, name = _split(prefix)
    names = {key[len(parent):].split('.', 1)[0] for key in unexpected_keys
             if key.startswith(parent) and key.count('.') > parent.count('.')}
    names.discard(name)
    number = re.search(r'\d*$', name).group()
    kinds = {}
    for sibling in sorted(names, key=lambda s: re.search(r'\d*$', s).group() != number):
        kind = _norm_kind(unexpected_keys, f'{parent}{sibling}.')
        if kind is not None:
            kinds[f'{parent}{sibling}.'] = kind
    return kinds


_WHAT = {
    'batchnorm': 'BatchNorm tensors (a BN checkpoint, e.g. torchvision://resnet50)',
    'authors-bcn': "the authors' BCN+WS layout before conversion",
    'affine': 'GroupNorm-style tensors (a GN or GN+WS checkpoint)',
    'bcn': 'BCN tensors',
}
_FIX = {
    'batchnorm': f'use BCN+WS weights (the authors\' rn50_bcn_ws.pth converted with {CONVERT}) '
                 f'or {FROM_SCRATCH}',
    'authors-bcn': f'convert the checkpoint once with {CONVERT} and load its output',
    'affine': "GN+WS weights belong in a GN+WS model (norm_cfg=dict(type='GN', num_groups=32)); "
              f'for BCN use BCN+WS weights converted with {CONVERT}',
    'bcn': 'check the key names: the checkpoint may come from a model with other module names',
    None: f'if the checkpoint holds a whole model, load the backbone with Pretrained '
          f"init_cfg's prefix='backbone.'; else use BCN+WS weights or {FROM_SCRATCH}",
}


def check_bcn_state(state_dict: Mapping[str, object], prefix: str,
                    unexpected_keys: Sequence[str] = ()) -> None:
    """Warn when ``state_dict`` lacks tensors of the ``mmws.BCN`` at ``prefix``.

    Names the missing keys (of :data:`BCN_KEYS`), what the checkpoint holds there or beside it
    (BatchNorm tensors at ``prefix`` itself, a ``downsample.1`` of a BN ResNet; a ``bn1.*``
    sibling the model has no module for; the authors' unconverted ``pbn`` layout; GN tensors)
    and the fix.

    Args:
        state_dict: The keys the loader hands this module (at least those under ``prefix``).
        prefix: The module's key prefix, ending with ``'.'`` (``''`` for a BCN loaded alone).
        unexpected_keys: The load's shared list of keys that no module took so far.
    """
    missing = [prefix + key for key in BCN_KEYS if prefix + key not in state_dict]
    if not missing:
        return
    here = _norm_kind(list(state_dict), prefix)
    if here is not None:
        found, kind = f"the checkpoint holds {_WHAT[here]} at '{prefix}'", here
    else:
        siblings = _unused_siblings(unexpected_keys, prefix) if prefix else {}
        if siblings:
            where, kind = next(iter(siblings.items()))
            found = f"the checkpoint holds {_WHAT[kind]} at '{where}', unused"
        else:
            found, kind = 'the checkpoint has no tensors for this layer', None
    warnings.warn(
        f"mmws.BCN '{prefix}': missing {', '.join(missing)}; {found}. The layer keeps its "
        f'initial tensors where keys are missing. Fix: {_FIX[kind]}.',
        CheckpointMismatchWarning, stacklevel=2)


def check_conv_ws_state(state_dict: Mapping[str, object], prefix: str,
                        unexpected_keys: Sequence[str] = ()) -> None:
    """Warn when the ``mmws.ConvWS`` at ``prefix`` loads conv weights trained without WS.

    The sign: the checkpoint has BatchNorm statistics (``running_var`` without BCN's
    ``bn_weight``) beside the conv, at a norm the model does not have (so they are in
    ``unexpected_keys``), e.g. ``layer1.0.bn1.*`` of ``torchvision://resnet50`` loaded into a
    GN+WS or BCN+WS ResNet. Such weights were trained as plain convs after which BN
    normalized; standardizing them changes what they compute. A BN+WS model, whose BatchNorm
    takes those statistics, is not warned about.

    Args:
        state_dict: The keys the loader hands this module.
        prefix: The module's key prefix, ending with ``'.'``.
        unexpected_keys: The load's shared list of keys that no module took so far (the
            loaders visit a module's parent, which lists its unused siblings, before it).
    """
    if prefix + 'weight' not in state_dict or not prefix:
        return
    batchnorms = [sibling for sibling, kind in _unused_siblings(unexpected_keys, prefix).items()
                  if kind == 'batchnorm']
    if not batchnorms:
        return
    warnings.warn(
        f"mmws.ConvWS '{prefix}': the checkpoint's BatchNorm beside it ('{batchnorms[0]}', "
        f'which this model does not have) says these conv weights were trained without WS; '
        f'WS changes what they compute. Fix: use GN+WS or BCN+WS weights '
        f"('open-mmlab://jhu/resnet50_gn_ws', or the authors' BCN+WS weights converted with "
        f'{CONVERT}) or {FROM_SCRATCH}.',
        CheckpointMismatchWarning, stacklevel=2)
