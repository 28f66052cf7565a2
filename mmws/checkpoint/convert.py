"""Convert released GN+WS / BCN+WS ImageNet ResNets to OpenMMLab ``ResNet`` backbone weights.

The output is ``{'state_dict': ..., 'meta': {'mmws_conversion': ...}}`` with backbone keys
(no ``backbone.`` prefix): the form MMEngine's ``Pretrained`` init of a backbone loads
(``init_cfg=dict(type='Pretrained', checkpoint=...)``, which reads ``state_dict`` and loads
with ``strict=False``). Because that load forgives missing and unexpected keys, the converter
validates instead: every source tensor is used exactly once or dropped for a stated reason,
every target tensor is filled, every shape matches the ResNet depth read off the source.
"""
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .layouts import LAYOUTS, Layout, detect_layout
from .resnet import OPTIONAL_TENSORS, resnet_depth, resnet_template
from .safe_load import load_checkpoint_file, load_pickle_file

#: The converter's option that loads a source without restriction.
TRUST_SOURCE_FLAG = '--trust-source'

#: Channel groups of the released GN+WS weights (GroupNorm checkpoints do not record it).
GN_GROUPS = 32


class ConversionError(ValueError):
    """A conversion that would leave tensors unused, targets unfilled or shapes wrong."""


@dataclass
class ConversionReport:
    """What a conversion did, and the configuration the converted weights need.

    Attributes:
        layout: Name of the source layout.
        depth: ResNet depth read off the source's blocks.
        conv_cfg: ``conv_cfg`` of the backbone that reproduces the source (the WS form it was
            trained with).
        norm_cfg: ``norm_cfg`` of the backbone (GroupNorm or ``mmws.BCN``, with the groups).
        converted: Number of target tensors written.
        dropped: Source keys dropped by design, with the reason.
        leftover: Source keys no rule used (or whose target a ResNet of ``depth`` lacks, or
            that another key already filled), with the reason.
        shape_errors: Source keys whose shape does not fit their target, with both shapes.
        missing: Target keys nothing filled.
    """
    layout: str
    depth: int
    conv_cfg: Dict[str, Any]
    norm_cfg: Dict[str, Any]
    converted: int = 0
    dropped: Dict[str, str] = field(default_factory=dict)
    leftover: Dict[str, str] = field(default_factory=dict)
    shape_errors: Dict[str, str] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every source tensor was used or dropped by design and every target filled."""
        return not (self.leftover or self.shape_errors or self.missing)

    def format(self) -> str:
        """A human-readable summary, listing every problem key."""
        lines = [
            f'layout {self.layout}, ResNet-{self.depth}: {self.converted} tensors converted, '
            f'{len(self.dropped)} dropped by design',
            f'use in the backbone config: conv_cfg={self.conv_cfg}, norm_cfg={self.norm_cfg}',
        ]
        reasons: Dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f'  dropped ({count}): {reason}' for reason, count in reasons.items()]
        for title, problems in (('leftover source tensors', self.leftover),
                                ('shape mismatches', self.shape_errors)):
            if problems:
                lines.append(f'{title} ({len(problems)}):')
                lines += [f'  {key}: {why}' for key, why in problems.items()]
        if self.missing:
            lines.append(f'target tensors not filled ({len(self.missing)}):')
            lines += [f'  {key}' for key in self.missing]
        lines.append('complete' if self.complete else 'INCOMPLETE')
        return '\n'.join(lines)

    def to_meta(self) -> Dict[str, Any]:
        """The report as plain Python values (loadable with ``torch.load(weights_only=True)``)."""
        return asdict(self)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The tensors of a checkpoint, without its wrappers.

    Takes ``checkpoint['state_dict']`` (training checkpoints) or ``checkpoint['blobs']``
    (Detectron ``.pkl``) when present, and strips a ``module.`` prefix that every key carries
    (``DataParallel``).
    """
    for wrapper in ('state_dict', 'blobs'):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = dict(checkpoint)
    if state and all(key.startswith('module.') for key in state):
        state = {key[len('module.'):]: value for key, value in state.items()}
    return state


def load_source(path: Union[str, Path], trust_source: bool = False) -> Dict[str, Any]:
    """Read a source checkpoint without running code from it, and unwrap it (see
    :func:`unwrap_state_dict`).

    ``.pkl`` files are Detectron pickles (Python 2, read with ``encoding='latin1'``) and may
    name only numpy's array types (:func:`~mmws.checkpoint.safe_load.load_pickle_file`); other
    files are read with :func:`~mmws.checkpoint.safe_load.load_checkpoint_file`. With
    ``trust_source`` both unpickle without restriction (for files the user vouches for).

    Raises:
        CheckpointError: A missing, empty, corrupt or unsafe file (naming ``--trust-source``).
        ConversionError: A file that is not a mapping, or an MMEngine training checkpoint.
    """
    path = Path(path)
    if path.suffix == '.pkl':
        checkpoint = load_pickle_file(path, trust_source, TRUST_SOURCE_FLAG)
    else:
        checkpoint = load_checkpoint_file(path, 'cpu', trust_source, TRUST_SOURCE_FLAG)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'{path} holds a {type(checkpoint).__name__}, not a state dict')
    _refuse_training_checkpoint(path, checkpoint)
    return unwrap_state_dict(checkpoint)


def _refuse_training_checkpoint(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """A checkpoint MMEngine wrote while training a whole mmdet/mmseg model needs no
    conversion: say what it is and how to use it."""
    state = checkpoint.get('state_dict')
    mmengine_keys = [key for key in ('message_hub', 'optimizer', 'param_schedulers')
                     if key in checkpoint]
    if not (mmengine_keys and isinstance(state, Mapping)):
        return
    parts = sorted({key.split('.')[0] for key in state})
    raise ConversionError(
        f'{path} is an MMEngine training checkpoint ({", ".join(mmengine_keys)}; model parts '
        f'{", ".join(parts)}), not a released ImageNet ResNet: it needs no conversion. Use it '
        f"as it is: load_from='{path}' (the whole model) or, for its backbone, "
        f"init_cfg=dict(type='Pretrained', checkpoint='{path}', prefix='backbone.').")


def _as_tensor(value: Any) -> Optional[Tensor]:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def _infer_depth(targets: Iterable[str]) -> int:
    """The ResNet depth whose blocks the target keys name."""
    blocks: Dict[int, int] = {}
    bottleneck = False
    for key in targets:
        match = re.match(r'layer([1-4])\.(\d+)\.', key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
            bottleneck |= '.conv3.' in key
    try:
        return resnet_depth(bottleneck, tuple(blocks.get(stage, 0) for stage in range(1, 5)))
    except ValueError as error:
        raise ConversionError(f'cannot tell the ResNet depth of the source: {error}') from None


def _fit_affine(tensor: Tensor, shape: Tuple[int, ...]) -> Tuple[Tensor, Optional[int]]:
    """Expand a per-group affine ``(1, G, 1)`` to per-channel ``(C,)``; returns ``G`` too.

    The authors' channel part applies ``weight[g]`` to the ``C / G`` contiguous channels of
    group ``g``, so repeating each value ``C / G`` times is exact.
    """
    if tensor.dim() == 3 and tensor.shape[0] == tensor.shape[2] == 1 and len(shape) == 1:
        groups = tensor.shape[1]
        if shape[0] % groups == 0:
            return tensor.reshape(groups).repeat_interleave(shape[0] // groups), groups
    return tensor, None


Mapped = Dict[str, Tuple[str, Tensor]]


def _rename(source: Mapping[str, Any],
            rules: Layout) -> Tuple[Mapped, Dict[str, str], Dict[str, str]]:
    """Apply the layout's rules: ``({target: (source key, tensor)}, dropped, leftover)``."""
    mapped: Mapped = {}
    dropped: Dict[str, str] = {}
    leftover: Dict[str, str] = {}
    for key, value in source.items():
        reason = rules.dropped(key)
        tensor = _as_tensor(value)
        if reason is None and tensor is None:
            reason = f'not a tensor ({type(value).__name__})'
        if reason is not None:
            dropped[key] = reason
            continue
        target = rules.target_key(key)
        if target is None:
            leftover[key] = f'no {rules.name} rule for this key'
        elif target in mapped:
            leftover[key] = f'{target} is already filled from {mapped[target][0]}'
        else:
            mapped[target] = (key, tensor)
    return mapped, dropped, leftover


def _fit(mapped: Mapped, template: Dict[str, Tuple[int, ...]], depth: int,
         leftover: Dict[str, str]) -> Tuple[Dict[str, Tensor], Dict[str, str], Set[int]]:
    """Check each tensor against the template (expanding per-group affines):
    ``(state_dict, shape_errors, group counts seen)``; unknown targets go to ``leftover``."""
    state_dict: Dict[str, Tensor] = {}
    shape_errors: Dict[str, str] = {}
    groups: Set[int] = set()
    for target, (key, tensor) in mapped.items():
        if target not in template:
            leftover[key] = f'maps to {target}, which ResNet-{depth} does not have'
            continue
        tensor, group_count = _fit_affine(tensor, template[target])
        if group_count is not None:
            groups.add(group_count)
        if tuple(tensor.shape) != template[target]:
            shape_errors[key] = (f'shape {tuple(tensor.shape)}, but {target} needs '
                                 f'{template[target]}')
            continue
        state_dict[target] = tensor
    return state_dict, shape_errors, groups


def _norm_cfg(norm: str, groups: Set[int]) -> Dict[str, Any]:
    """The backbone's ``norm_cfg``; GroupNorm checkpoints do not record their groups."""
    if len(groups) > 1:
        raise ConversionError(f'the source norms use different group counts {sorted(groups)}')
    num_groups = next(iter(groups)) if groups else GN_GROUPS
    if norm == 'gn':
        return {'type': 'GN', 'num_groups': num_groups, 'requires_grad': True}
    return {'type': 'mmws.BCN', 'num_groups': num_groups}


def convert_state_dict(source: Mapping[str, Any],
                       layout: Optional[str] = None,
                       allow_partial: bool = False) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Rename and reshape a source state dict into OpenMMLab ``ResNet`` backbone keys.

    Args:
        source: Source tensors (torch tensors or numpy arrays), already unwrapped.
        layout: Name of a layout in :data:`mmws.checkpoint.layouts.LAYOUTS`; detected from
            the keys when ``None``.
        allow_partial: Return an incomplete conversion instead of raising.

    Returns:
        ``(state_dict, report)``; ``state_dict`` is in the target ResNet's module order.

    Raises:
        ConversionError: If the conversion is incomplete (the message is the report) and
            ``allow_partial`` is false, or the layout or depth cannot be determined.
    """
    try:
        rules: Layout = LAYOUTS[layout] if layout is not None else detect_layout(source)
    except KeyError:
        raise ConversionError(f'layout must be one of {sorted(LAYOUTS)}, got {layout!r}') from None
    except ValueError as error:
        raise ConversionError(str(error)) from None
    mapped, dropped, leftover = _rename(source, rules)
    depth = _infer_depth(mapped)
    template = resnet_template(depth, rules.norm)
    state_dict, shape_errors, groups = _fit(mapped, template, depth, leftover)
    report = ConversionReport(
        layout=rules.name, depth=depth, conv_cfg=dict(rules.conv_cfg),
        norm_cfg=_norm_cfg(rules.norm, groups), converted=len(state_dict), dropped=dropped,
        leftover=leftover, shape_errors=shape_errors,
        missing=[key for key in template
                 if key not in state_dict and key.rpartition('.')[2] not in OPTIONAL_TENSORS])
    if not (report.complete or allow_partial):
        raise ConversionError(f'refusing an incomplete conversion:\n{report.format()}')
    return {key: state_dict[key] for key in template if key in state_dict}, report


def convert_checkpoint(source_path: Union[str, Path],
                       output_path: Union[str, Path],
                       layout: Optional[str] = None,
                       allow_partial: bool = False,
                       trust_source: bool = False) -> ConversionReport:
    """Convert a checkpoint file and write the result (see :func:`convert_state_dict`).

    The output holds ``state_dict`` (backbone keys) and ``meta['mmws_conversion']`` (the
    report, including the ``conv_cfg``/``norm_cfg`` to use). Nothing is written when the
    conversion raises.

    Returns:
        The conversion report.
    """
    state_dict, report = convert_state_dict(
        load_source(source_path, trust_source), layout, allow_partial)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': state_dict, 'meta': {'mmws_conversion': report.to_meta()}},
               output_path)
    return report
