"""Fold Weight Standardization and BCN into plain layers for deployment: ``mmws.fuse``.

In eval mode both are fixed functions of the parameters:

- a :class:`~mmws.ConvWS` is a plain convolution with the standardized weight ``Ŵ``;
- a :class:`~mmws.BCN` is a per-channel affine ``y = a x + b`` (its batch part with the
  estimates, ``a = γ_bn / sqrt(σ̂² + eps)``, ``b = β_bn - a μ̂``) followed by a GroupNorm with
  per-channel affine (its channel part).

A conv ``z = W * x + c`` directly followed by that affine folds into one conv with weight
``a[o] W[o]`` and bias ``a[o] c[o] + b[o]``. WS and BCN layers are replaced by ``nn.Conv2d``,
``nn.GroupNorm`` and, where no conv can take the affine, a :class:`ChannelAffine` (a multiply
and an add): standard operators that trace and export to ONNX.
"""
import sys
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .models import BCN, ConvWS
from .models.functional import batch_affine, standardize_weight

#: Modules of the OpenMMLab ResNets whose ``conv{k}`` feeds ``getattr(self, norm{k}_name)``
#: directly (the stem with ``deep_stem=False``, ``BasicBlock``, ``Bottleneck`` and subclasses).
_RESNET_MODULES = {
    'mmdet.models.backbones.resnet': ('ResNet', 'BasicBlock', 'Bottleneck'),
    'mmseg.models.backbones.resnet': ('ResNet', 'BasicBlock', 'Bottleneck'),
}


class ChannelAffine(nn.Module):
    """``y[:, c] = scale[c] * x[:, c] + shift[c]`` for input ``(N, C, *S)``.

    The batch part of an eval-mode BCN that no preceding conv can absorb.
    """

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer('scale', scale.detach().clone())
        self.register_buffer('shift', shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1, ) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f'{self.scale.numel()}'


def _resnet_types() -> Tuple[type, ...]:
    # A model holding such a module has imported its toolbox: look, never import.
    return tuple(getattr(sys.modules[name], cls) for name, classes in _RESNET_MODULES.items()
                 if name in sys.modules for cls in classes)


def _foldable_conv(module: nn.Module) -> bool:
    """A conv whose output is exactly ``conv2d(x, W, c)`` with ``W`` its (standardized) weight."""
    plain = type(module) is nn.Conv2d or isinstance(module, ConvWS)
    return plain and not (module._forward_hooks or module._forward_pre_hooks)


def _conv_norm_pairs(model: nn.Module) -> Iterator[Tuple[str, str]]:
    """Names ``(conv, norm)`` of each conv whose output feeds a BCN and nothing else."""
    from mmcv.cnn import ConvModule
    resnet_types = _resnet_types()
    for name, module in model.named_modules():
        prefix = f'{name}.' if name else ''
        if isinstance(module, ConvModule):
            if module.with_norm and module.order.index('norm') == module.order.index('conv') + 1:
                yield f'{prefix}conv', f'{prefix}{module.norm_name}'
        elif isinstance(module, nn.Sequential):
            children = list(module._modules)
            for first, second in zip(children, children[1:]):
                yield f'{prefix}{first}', f'{prefix}{second}'
        elif isinstance(module, resnet_types):
            for k in (1, 2, 3):
                norm_name = getattr(module, f'norm{k}_name', None)
                if f'conv{k}' in module._modules and norm_name in module._modules:
                    yield f'{prefix}conv{k}', f'{prefix}{norm_name}'


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent), child, module)


def _plain_conv(conv: nn.Conv2d, weight: Tensor, bias: Optional[Tensor]) -> nn.Conv2d:
    """An ``nn.Conv2d`` with ``conv``'s geometry and the given weight and bias."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias is not None,
                      conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if bias is not None:
            fused.bias.copy_(bias)
    return fused


def _conv_weight(conv: nn.Conv2d) -> Tensor:
    """The weight the conv convolves with, in float64."""
    weight = conv.weight.detach().double()
    if isinstance(conv, ConvWS):
        return standardize_weight(weight, conv.eps, conv.unbiased, conv.eps_inside_sqrt)
    return weight


def _batch_part(norm: BCN) -> Tuple[Tensor, Tensor]:
    """``(a, b)`` of the eval-mode batch part ``y = a x + b``, in float64."""
    return batch_affine(norm.running_mean.double(), norm.running_var.double(),
                        norm.bn_weight.detach().double(), norm.bn_bias.detach().double(),
                        norm.eps)


def _channel_part(norm: BCN) -> nn.GroupNorm:
    group_norm = nn.GroupNorm(norm.num_groups, norm.num_channels, norm.eps, affine=True,
                              device=norm.weight.device, dtype=norm.weight.dtype)
    with torch.no_grad():
        group_norm.weight.copy_(norm.weight)
        group_norm.bias.copy_(norm.bias)
    return group_norm


def _fold(conv: nn.Conv2d, norm: BCN) -> Tuple[nn.Conv2d, nn.GroupNorm]:
    """The conv with the batch part folded in, and the channel part."""
    scale, shift = _batch_part(norm)
    weight = _conv_weight(conv) * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else scale * conv.bias.detach().double() + shift
    return _plain_conv(conv, weight, bias), _channel_part(norm)


def fuse(model: nn.Module) -> nn.Module:
    """Replace WS convs and BCN layers by equivalent plain layers for inference, in place.

    - A BCN fed only by a conv (``nn.Conv2d`` or :class:`~mmws.ConvWS`, without hooks) is
      folded into it: the conv becomes an ``nn.Conv2d`` with weight ``a[o] Ŵ[o]`` and bias
      ``a[o] c[o] + b[o]``, the BCN an ``nn.GroupNorm`` (its channel part). "Fed only by"
      is read off the structure: mmcv ``ConvModule`` (``conv`` then its norm in ``order``),
      consecutive children of an ``nn.Sequential`` (``downsample.0 -> downsample.1``, deep
      stems), and the OpenMMLab ResNets' ``conv{k} -> norm{k}_name`` (stem and blocks).
    - Any other BCN becomes ``nn.Sequential(ChannelAffine(a, b), nn.GroupNorm)``.
    - Any other ConvWS becomes an ``nn.Conv2d`` holding ``Ŵ``.

    The fused model computes what the original computes in eval mode (BCN uses its
    estimates), up to float rounding; the arithmetic of the folding is done in float64. It is
    left in eval mode and is for inference only: BCN's estimates no longer exist. Folding
    depends only on the structure, so a fused state dict loads into any model built from the
    same config and fused.

    Args:
        model: Any module; changed in place.

    Returns:
        ``model``, in eval mode.
    """
    model.eval()
    modules = dict(model.named_modules())
    pairs: List[Tuple[str, str]] = [
        (conv, norm) for conv, norm in _conv_norm_pairs(model)
        if _foldable_conv(modules[conv]) and isinstance(modules[norm], BCN)
    ]
    for conv_name, norm_name in pairs:
        fused_conv, group_norm = _fold(modules[conv_name], modules[norm_name])
        _set_submodule(model, conv_name, fused_conv)
        _set_submodule(model, norm_name, group_norm)
    for name, module in list(model.named_modules()):
        if isinstance(module, BCN):
            scale, shift = _batch_part(module)
            affine = ChannelAffine(scale.to(module.weight.dtype), shift.to(module.weight.dtype))
            _set_submodule(model, name, nn.Sequential(affine, _channel_part(module)))
        elif isinstance(module, ConvWS):
            bias = None if module.bias is None else module.bias.detach()
            _set_submodule(model, name, _plain_conv(module, _conv_weight(module), bias))
    model.eval()
    return model
