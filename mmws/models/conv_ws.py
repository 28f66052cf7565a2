"""Weight Standardization (Qiao et al., arXiv 1903.10520): ``mmws.ConvWS``.

A drop-in ``nn.Conv2d`` that convolves with each output filter standardized to zero mean and
unit variance. WS reparameterizes the weight (the gradient flows through the statistics) and
smooths the loss landscape; it is meant for convs followed by a normalization (GN, BCN, BN).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..registry import MODELS
from .functional import standardize_weight, statistics_dtype, unbiased_row_scale
from .load_checks import check_conv_ws_state


@MODELS.register_module()
class ConvWS(nn.Conv2d):
    """2D convolution with Weight Standardization.

    A drop-in ``nn.Conv2d`` (same arguments, same ``weight``/``bias`` state-dict keys, so plain
    conv checkpoints load as they are) that convolves with each output filter standardized
    over its ``n = in_channels / groups * kH * kW`` entries (``n >= 2``)::

        Ŵ = (W - μ) / σ,   σ = std(W) + eps          (eps_inside_sqrt=False, default)
                           σ = sqrt(var(W) + eps)    (eps_inside_sqrt=True)

    with the variance unbiased (``1/(n-1)``, default) or biased (``1/n``); the gradient flows
    through ``μ`` and ``σ``. The default reproduces the released GN+WS weights (the authors'
    detection and segmentation code, mmcv's ``ConvWS2d``); the authors' BCN+WS ImageNet
    weights use ``eps_inside_sqrt=True``; the paper's text ``unbiased=False``. Under
    ``torch.autocast`` the statistics are computed in float32.

    A training step standardizes with one group-norm kernel forward and one batch-norm
    backward kernel (:func:`~mmws.models.functional.standardize_weight`), without host
    synchronization; ``torch.compile(fullgraph=True)`` traces it. In ``eval()`` without
    autograd the standardized weight is cached while the weight is unchanged (same storage
    and version counter), so inference costs a plain conv. In-place changes, device or dtype
    moves and every ``train()``/``eval()`` call drop the cache; a write through ``.data``
    bypasses the version counter: make it before ``eval()``, or call ``eval()`` again.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype: As ``nn.Conv2d``; at least 1 input and 1 output
            channel and 2 weights per filter.
        eps: Added to the std (or the variance), ``>= 0``.
        unbiased: Whether the filter variance divides by ``n - 1`` (else ``n``).
        eps_inside_sqrt: Whether ``eps`` goes inside the square root.

    Shape:
        Input ``(N, in_channels, H, W)`` with any ``N >= 0``; output as ``nn.Conv2d``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size,
                 stride=1,
                 padding=0,
                 dilation=1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 eps: float = 1e-5,
                 unbiased: bool = True,
                 eps_inside_sqrt: bool = False) -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f'ConvWS needs at least 1 input and 1 output channel, got '
                             f'in_channels={in_channels}, out_channels={out_channels}')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        if min(self.kernel_size) < 1:
            raise ValueError(f'ConvWS needs a kernel of at least 1×1, got '
                             f'kernel_size={kernel_size}')
        fan_in = self.weight[0].numel()
        if fan_in < 2:
            # A single weight minus its mean is 0 in every form: the conv would output its bias
            # and pass no gradient to its weight or input.
            raise ValueError(
                f'ConvWS needs at least 2 weights per filter to standardize, got {fan_in} '
                f'(in_channels/groups={in_channels // groups}, kernel_size={kernel_size}); a '
                f'filter of 1 weight standardizes to 0 whatever unbiased is. Use a plain conv '
                f'there: `nn.Conv2d({in_channels}, {out_channels}, {kernel_size!r}, '
                f'groups={groups})`, or conv_cfg=None in an mmcv config')
        if eps < 0:
            raise ValueError(f'ConvWS eps must be >= 0, got {eps}')
        self.eps = eps
        self.unbiased = unbiased
        self.eps_inside_sqrt = eps_inside_sqrt
        # The constant sqrt((n-1)/n) per filter, held so that no training step spends an
        # operator on it (derived from the shape: not in the state dict).
        self.register_buffer('unbiased_row_scale', self._make_unbiased_row_scale(),
                             persistent=False)
        self._cached_weight: Optional[Tensor] = None
        self._cached_key: Optional[Tuple] = None

    def _make_unbiased_row_scale(self) -> Optional[Tensor]:
        weight = self.weight
        if not self.unbiased:
            return None
        return unbiased_row_scale(self.out_channels, weight[0].numel(), device=weight.device,
                                  dtype=statistics_dtype(weight.dtype))

    def _apply(self, fn, recurse: bool = True) -> 'ConvWS':
        super()._apply(fn, recurse)
        # Re-derive the constant for the weight's new device and statistics dtype: a cast
        # would round it (float32 to float64, or to the weight's fp16/bf16).
        self.unbiased_row_scale = self._make_unbiased_row_scale()
        return self

    def standardized_weight(self) -> Tensor:
        """The weight the conv uses, ``(out_channels, in_channels/groups, kH, kW)``."""
        return standardize_weight(self.weight, self.eps, self.unbiased, self.eps_inside_sqrt,
                                  self.unbiased_row_scale).to(self.weight.dtype)

    def _weight_key(self) -> Tuple:
        weight = self.weight
        return (weight.data_ptr(), weight._version, weight.device, weight.dtype)

    def _inference_weight(self) -> Tensor:
        key = self._weight_key()
        if self._cached_key != key:
            self._cached_weight = self.standardized_weight()
            self._cached_key = key
        return self._cached_weight

    def train(self, mode: bool = True) -> 'ConvWS':
        self._cached_weight = self._cached_key = None
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        check_conv_ws_state(state_dict, prefix, unexpected_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        use_cache = not (self.training or torch.is_grad_enabled())
        weight = self._inference_weight() if use_cache else self.standardized_weight()
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, eps={self.eps}, unbiased={self.unbiased}, '
                f'eps_inside_sqrt={self.eps_inside_sqrt}')

    def __getstate__(self):
        # The cache is derived state: never pickle or deepcopy it.
        state = super().__getstate__()
        state = dict(state, _cached_weight=None, _cached_key=None)
        return state
