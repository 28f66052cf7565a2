"""Batch-Channel Normalization (Qiao et al., arXiv 1903.10520): ``mmws.BCN``.

BCN is a batch normalization followed by a channel (group) normalization. The batch part keeps
channels away from elimination singularities; the channel part makes the output independent of
the batch size. In micro-batch training (1–2 images per GPU) the batch part normalizes with
*estimated* statistics that move toward each batch's statistics, since the tiny batch's own
statistics are noise.
"""
import functools
from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..registry import MODELS
from .functional import (batch_affine, batch_channel_norm_reference, channel_moments,
                         estimate_update, group_scale_shift, moment_affine)

MODES = ('micro', 'batch', 'sync')


def _distributed_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_channel_moments(sample_mean: Tensor, sample_var: Tensor, spatial_size: int,
                            differentiable: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance over all elements of all processes' batches.

    Each process contributes sums over its ``N × M`` elements per channel (processes may have
    different ``N`` and spatial sizes ``M``, including ``N = 0``); one all-reduce adds
    ``[count, Σ x, Σ x²]``, in float64 for the estimates (no gradient) or in the moments' dtype
    through the differentiable all-reduce (sync mode).

    Args:
        sample_mean: Per-sample channel means of this process, ``(N, C)``.
        sample_var: Per-sample channel biased variances, ``(N, C)``.
        spatial_size: ``M``, the spatial positions per sample.
        differentiable: Whether gradients flow back through the all-reduce.

    Returns:
        ``(mean, var, count)``: ``(C,)``, ``(C,)`` and the global element count (a scalar
        tensor; the statistics are zeros where it is 0).
    """
    count = sample_mean.new_full((1, ), float(sample_mean.shape[0] * spatial_size))
    sums = spatial_size * sample_mean.sum(0)
    square_sums = spatial_size * (sample_var + sample_mean.square()).sum(0)
    packed = torch.cat([count, sums, square_sums])
    if differentiable:
        from torch.distributed.nn.functional import all_reduce
        packed = all_reduce(packed)
    else:
        packed = packed.detach().double()
        dist.all_reduce(packed)
    channels = sample_mean.shape[1]
    total = packed[0]
    mean = packed[1:1 + channels] / total.clamp_min(1)
    var = (packed[1 + channels:] / total.clamp_min(1) - mean.square()).clamp_min(0)
    return mean.to(sample_mean.dtype), var.to(sample_mean.dtype), total


@MODELS.register_module()
class BCN(nn.GroupNorm):
    """Batch-Channel Normalization: ``BCN(x) = CN(BN(x))``.

    For ``x`` of shape ``(N, C, *S)``::

        y[n,c] = γ_bn[c] (x[n,c] - μ[c]) / sqrt(σ²[c] + eps) + β_bn[c]        (batch part)
        z[n,c] = γ[c] (y[n,c] - m[n,g]) / sqrt(v[n,g] + eps) + β[c]            (channel part)

    with ``(m, v)`` the per-sample mean and biased variance of ``y`` over the ``C / G`` channels
    of group ``g`` and all spatial positions (a group normalization, identical in train and
    eval). ``(μ, σ²)`` depend on ``mode``:

    - ``'micro'`` (default, 1–2 images per GPU): the estimates ``running_mean`` and
      ``running_var`` (no gradient through them). In training, each step first moves them
      toward this batch's per-channel mean and *biased* variance,
      ``μ̂ ← (1 - r) μ̂ + r μ_batch`` (likewise ``σ̂²``), then normalizes with the updated
      estimates. Under ``torch.distributed`` the batch statistics are those of all elements of
      all processes' batches (one all-reduce), so every rank keeps identical estimates.
    - ``'batch'``: this process's batch statistics, as ``nn.BatchNorm2d`` (large batches per
      GPU); the estimates follow them with rate ``r`` for evaluation.
    - ``'sync'``: the batch statistics of all processes, with gradients flowing through the
      all-reduce (as ``nn.SyncBatchNorm``); a single process behaves as ``'batch'``.

    In ``eval()`` every mode normalizes with the estimates.

    The rate ``r`` is ``momentum`` (default 0.1: the estimates average the last ~10 batches,
    half-life ln 2 / r ≈ 7 steps; see the README for how they track a shifting input). With
    ``average_warmup`` the rate of step ``t`` (counted by ``num_batches_tracked``) is
    ``max(r, 1 / (t + 1))``: until ``1 / r`` batches have been seen the estimates are the plain
    average of all batches so far, which removes the bias of their ``(0, 1)`` initialization
    (the first step copies the batch statistics). ``momentum=0`` freezes the estimates.

    The computation is fused: the batch part is a per-channel affine during the step, so the
    group statistics of ``y`` follow from per-sample channel moments of ``x`` and BCN runs as
    one statistics pass and one output pass ``z = S x + T``, saving only ``x`` for backward.

    BCN subclasses ``nn.GroupNorm`` (its outer operation; ``weight``/``bias`` are the channel
    part's per-channel affine), so MMEngine's optimizer constructor treats all four affine
    tensors as norm parameters (``norm_decay_mult``). It is not a ``_BatchNorm``:
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` and the runner's ``sync_bn`` leave it intact
    (use ``mode='sync'`` for synchronized batch statistics), and mmdet's ``norm_eval=True``,
    which only switches ``_BatchNorm`` layers to eval, leaves BCN training: its estimates keep
    moving. Set ``momentum=0`` to freeze them.

    Args:
        num_features: Number of channels ``C``.
        num_groups: Number of channel groups ``G`` of the channel part; must divide ``C``.
        eps: Epsilon of both parts.
        momentum: Update rate ``r`` of the estimates, in ``[0, 1]``.
        mode: ``'micro'``, ``'batch'`` or ``'sync'``.
        average_warmup: Whether the rate is ``max(r, 1 / (t + 1))`` (see above).

    Shape:
        Input ``(N, C, *S)`` with any ``N >= 0``; output the same shape. An empty input
        returns an empty output and leaves the estimates untouched; under ``torch.distributed``
        it still takes part in the all-reduce, so the estimates follow the other processes'
        statistics and no process waits for it.
    """

    _abbr_ = 'bcn'

    def __init__(self,
                 num_features: int,
                 num_groups: int = 32,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 mode: str = 'micro',
                 average_warmup: bool = True) -> None:
        if num_groups <= 0 or num_features <= 0 or num_features % num_groups != 0:
            raise ValueError(f'BCN needs num_features divisible by num_groups, got '
                             f'num_features={num_features}, num_groups={num_groups}')
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f'BCN momentum must be in [0, 1], got {momentum}')
        if mode not in MODES:
            raise ValueError(f'BCN mode must be one of {MODES}, got {mode!r}')
        if eps <= 0:
            raise ValueError(f'BCN eps must be > 0, got {eps}')
        super().__init__(num_groups, num_features, eps=eps, affine=True)
        self.momentum = momentum
        self.mode = mode
        self.average_warmup = average_warmup
        self.bn_weight = nn.Parameter(torch.ones(num_features))
        self.bn_bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))

    @property
    def num_features(self) -> int:
        return self.num_channels

    def reset_running_stats(self) -> None:
        """Reset the estimates to mean 0, variance 1 and the step count to 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        super().reset_parameters()  # the channel part's affine
        if hasattr(self, 'bn_weight'):  # nn.GroupNorm.__init__ calls this before they exist
            nn.init.ones_(self.bn_weight)
            nn.init.zeros_(self.bn_bias)
            self.reset_running_stats()

    def update_rate(self) -> float:
        """The rate ``r`` of the next estimate update."""
        if self.average_warmup:
            return max(self.momentum, 1.0 / (int(self.num_batches_tracked) + 1))
        return self.momentum

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f'BCN({self.num_channels}) expects input of shape (N, '
                             f'{self.num_channels}, ...), got {tuple(x.shape)}')

    def _uses_batch_statistics(self) -> bool:
        return self.training and self.mode != 'micro'

    def _update_estimates(self, mean: Tensor, var: Tensor) -> None:
        rate = self.update_rate()
        with torch.no_grad():
            estimate_update(self.running_mean, mean.detach(), rate)
            estimate_update(self.running_var, var.detach(), rate)
            self.num_batches_tracked.add_(1)

    def _synchronizes_statistics(self) -> bool:
        """Whether this step's batch statistics come from an all-reduce over processes."""
        return self.training and self.mode != 'batch' and _distributed_world_size() > 1

    def _batch_statistics(self, sample_mean: Tensor, sample_var: Tensor,
                          spatial_size: int) -> Tuple[Tensor, Tensor, int]:
        """Per-channel statistics of this step and their element count (of all processes
        where the mode says so)."""
        if self._synchronizes_statistics():
            mean, var, count = _global_channel_moments(
                sample_mean, sample_var, spatial_size, differentiable=self.mode == 'sync')
            return mean, var, int(count)
        mean, var = channel_moments(sample_mean, sample_var)
        return mean, var, sample_mean.shape[0] * spatial_size

    def _scale_shift(self, spatial_size: int, sample_mean: Tensor, sample_var: Tensor,
                     bn_weight: Tensor, bn_bias: Tensor, weight: Tensor,
                     bias: Tensor) -> Tuple[Tensor, Tensor]:
        """``(S, T)`` of ``z = S x + T`` from the per-sample moments of ``x``; updates the
        estimates in training."""
        if self.training:
            mean, var, count = self._batch_statistics(sample_mean, sample_var, spatial_size)
            if self.momentum > 0 and count > 0:
                self._update_estimates(mean, var)
        if not self._uses_batch_statistics():
            mean = self.running_mean.to(sample_mean.dtype)
            var = self.running_var.to(sample_mean.dtype)
        scale, shift = batch_affine(mean, var, bn_weight, bn_bias, self.eps)
        return group_scale_shift(sample_mean, sample_var, scale, shift, weight, bias,
                                 self.num_groups, self.eps)

    def _empty_forward(self, x: Tensor) -> Tensor:
        """An empty batch: nothing to normalize, but peers that all-reduce their statistics
        need this process to take part (with zero elements) to neither hang nor diverge."""
        if not self._synchronizes_statistics():
            return x.clone()
        # In sync mode the all-reduce is differentiable: its input must require grad and its
        # output stay in the graph, so that this process joins its backward too.
        no_samples = x.new_zeros((0, self.num_channels), dtype=torch.float32,
                                 requires_grad=self.mode == 'sync' and torch.is_grad_enabled())
        out_scale, out_shift = self._scale_shift(1, no_samples, no_samples, self.bn_weight,
                                                 self.bn_bias, self.weight, self.bias)
        return x.clone() + 0 * (out_scale.sum() + out_shift.sum()).to(x.dtype)

    def _check_batch_size(self, x: Tensor) -> None:
        values_per_channel = x.numel() // self.num_channels
        if self._synchronizes_statistics():
            return  # other processes contribute values too
        if values_per_channel < 2:
            raise ValueError(
                f"BCN(mode='{self.mode}') needs more than 1 value per channel in training, "
                f'got input of shape {tuple(x.shape)}; use mode=\'micro\' for micro-batches')

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.numel() == 0:
            return self._empty_forward(x)
        if self._uses_batch_statistics():
            self._check_batch_size(x)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._reference_forward(x)
        if torch.is_autocast_enabled(x.device.type):
            # Like GroupNorm under autocast: normalize in float32, return float32.
            with torch.autocast(x.device.type, enabled=False):
                return self._fused_forward(x.float())
        return self._fused_forward(x)

    def _fused_forward(self, x: Tensor) -> Tensor:
        params = (self.bn_weight, self.bn_bias, self.weight, self.bias)
        spatial_size = x[0, 0].numel()
        return moment_affine(x, functools.partial(self._scale_shift, spatial_size), params)

    def _reference_forward(self, x: Tensor) -> Tensor:
        """The plain composition (tracing, export): estimates only, no update."""
        if self.training:
            raise RuntimeError('BCN can only be traced or exported in eval() mode')
        return batch_channel_norm_reference(x, self.running_mean, self.running_var,
                                            self.bn_weight, self.bn_bias, self.weight,
                                            self.bias, self.num_groups, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints written without the step counter (as old BN ones) load as step 0.
        key = prefix + 'num_batches_tracked'
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f'{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, '
                f'momentum={self.momentum}, mode={self.mode!r}, '
                f'average_warmup={self.average_warmup}')
