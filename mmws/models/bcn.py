"""Batch-Channel Normalization (Qiao et al., arXiv 1903.10520): ``mmws.BCN``.

BCN is a batch normalization followed by a channel (group) normalization. The batch part keeps
channels away from elimination singularities; the channel part makes the output independent of
the batch size. In micro-batch training (1–2 images per GPU) the batch part normalizes with
*estimated* statistics that move toward each batch's statistics, since the tiny batch's own
statistics are noise.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..registry import MODELS
from .functional import (batch_channel_norm, batch_channel_norm_reference, channel_moments,
                         estimate_rate, estimate_update, second_moment_about)
from .load_checks import check_bcn_state

MODES = ('micro', 'batch', 'sync')


def _distributed_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_channel_moments(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance over all elements of all processes' batches.

    Processes may have different ``N`` and spatial sizes, including ``N = 0``. One float64
    all-reduce adds ``[count, Σ x, Σ x²]`` (from this process's moments, so ``Σ x²`` is never
    formed from raw squares); nothing is read back to the host.

    Args:
        x: This process's input, ``(N, C, *S)``.

    Returns:
        ``(mean, var, count)``: ``(C,)``, ``(C,)`` in ``x``'s statistics dtype, and the
        global element count per channel (a float64 scalar tensor; the statistics are zeros
        where it is 0).
    """
    local_count = x.numel() // x.shape[1]
    if local_count:
        mean, var = channel_moments(x)
    else:
        mean = var = x.new_zeros(x.shape[1])
    mean, var = mean.double(), var.double()
    packed = torch.cat([mean.new_full((1, ), local_count), local_count * mean,
                        local_count * (var + mean.square())])
    dist.all_reduce(packed)
    count, sums, square_sums = packed[0], *packed[1:].chunk(2)
    global_mean = sums / count.clamp_min(1)
    global_var = (square_sums / count.clamp_min(1) - global_mean.square()).clamp_min(0)
    return global_mean.to(x.dtype), global_var.to(x.dtype), count


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
      toward this batch's statistics with rate ``r`` — the authors' ``EstBN`` form, the
      variance as the second moment about the *previous* mean estimate::

          μ̂ ← (1 - r) μ̂ + r μ_B
          σ̂² ← (1 - r) σ̂² + r mean((x - μ̂_old)²) = (1 - r) σ̂² + r (σ²_B + (μ_B - μ̂_old)²)

      then normalizes with the updated estimates. The second moment counts the spread of the
      per-image means around the estimate, so ``σ̂²`` converges to the *population* variance
      (within-image plus between-image) whatever the number of images per step; the batch's
      own variance alone would converge to the within-image part only. The very first update
      (``num_batches_tracked == 0``: nothing estimated yet) centres on the batch mean. Under
      ``torch.distributed`` the batch statistics are those of all elements of all processes'
      batches (one all-reduce), so every rank keeps identical estimates.
    - ``'batch'``: this process's batch statistics, as ``nn.BatchNorm2d`` (large batches per
      GPU); the estimates follow the batch mean and *unbiased* variance with rate ``r``, as
      ``nn.BatchNorm2d``'s do. A ``'batch'`` BCN equals ``BatchNorm2d → GroupNorm`` (estimates
      included, with ``average_warmup=False``).
    - ``'sync'``: the batch statistics of all processes, with gradients flowing through them
      (as ``nn.SyncBatchNorm``); a single process behaves as ``'batch'``.

    In ``eval()`` every mode normalizes with the estimates.

    The rate ``r`` is ``momentum`` (default 0.1: the estimates average the last ~10 batches,
    half-life ln 2 / r ≈ 7 steps; see the README for how they track a shifting input). It can
    be changed at any time (``bcn.momentum = 0.05``, e.g. by :class:`mmws.BCNMomentumHook`)
    without recompiling a compiled model: it lives in a device buffer. With
    ``average_warmup`` the rate of step ``t`` (counted by ``num_batches_tracked``) is
    ``max(r, 1 / (t + 1))``: until ``1 / r`` batches have been seen the estimates are the
    average of all batches so far, which removes the bias of their ``(0, 1)`` initialization.
    ``momentum=0`` freezes the estimates. A checkpoint that holds estimates but no step
    counter loads as warmed up (``t = ceil(1/r) - 1``): loaded estimates are never discarded.

    The layer is lean on accelerators: no host synchronization, one all-reduce per step under
    ``torch.distributed``, two native kernels forward (``batch_norm``, ``group_norm``) and three
    backward, saving only ``x`` (like ``nn.GroupNorm``), and ``torch.compile(fullgraph=True)``
    traces it.

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
        if mode not in MODES:
            raise ValueError(f'BCN mode must be one of {MODES}, got {mode!r}')
        if eps <= 0:
            raise ValueError(f'BCN eps must be > 0, got {eps}')
        super().__init__(num_groups, num_features, eps=eps, affine=True)
        self.mode = mode
        self.average_warmup = average_warmup
        self.bn_weight = nn.Parameter(torch.ones(num_features))
        self.bn_bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))
        # [r, warm-up weight]: read by the forward on the device (see `momentum`).
        self.register_buffer('rate_config', torch.zeros(2), persistent=False)
        self.momentum = momentum

    @property
    def num_features(self) -> int:
        return self.num_channels

    @property
    def momentum(self) -> float:
        """The update rate ``r`` of the estimates."""
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f'BCN momentum must be in [0, 1], got {value}')
        self._momentum = float(value)
        # fill_ with a host scalar: a device kernel, no synchronization.
        self.rate_config[0].fill_(self._momentum)
        self.rate_config[1].fill_(float(self.average_warmup and self._momentum > 0))

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

    def update_rate(self) -> Tensor:
        """The rate ``r_t`` of the next estimate update (a scalar tensor on the device)."""
        return estimate_rate(self.num_batches_tracked + 1, self.rate_config)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if torch.is_autocast_enabled(x.device.type):
            # Like GroupNorm under autocast: normalize in float32, return float32.
            with torch.autocast(x.device.type, enabled=False):
                return self._normalize(x.float())
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._eval_forward(x)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise RuntimeError('BCN can only be traced or exported in eval() mode')
        # 1. This step's statistics: of the local batch, or of all processes' batches.
        batch_mean, batch_var, count = self._batch_statistics(x)
        # 2. The estimate update.
        if batch_mean is not None:
            self._update_estimates(batch_mean, batch_var, count, x)
        # 3. The statistics the batch part normalizes with, and 4. the normalization.
        if self.mode == 'micro' or batch_mean is None:
            # Copies: the backward needs this step's estimates, and a shared module (a head
            # applied to every FPN level) updates the buffers again before it runs.
            mean, var = self.running_mean.clone(), self.running_var.clone()
            grad_mode = 'estimates'
        else:
            mean, var = batch_mean, batch_var
            grad_mode = 'sync' if count is not None else 'batch'
        return batch_channel_norm(x, mean.to(x.dtype), var.to(x.dtype), self.bn_weight,
                                  self.bn_bias, self.weight, self.bias, self.num_groups,
                                  self.eps, grad_mode, count)

    def _eval_forward(self, x: Tensor) -> Tensor:
        """The estimates, no update: the plain composition (it traces and exports)."""
        if x.numel() == 0:
            return x.clone()
        return batch_channel_norm_reference(x, self.running_mean.to(x.dtype),
                                            self.running_var.to(x.dtype), self.bn_weight,
                                            self.bn_bias, self.weight, self.bias,
                                            self.num_groups, self.eps)

    def _batch_statistics(
            self, x: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(mean, biased var, global count or None)`` of this training step.

        The statistics are ``None`` when there is nothing to take them from (an empty batch
        on a single process). ``count`` is set when they come from an all-reduce (micro and
        sync modes under ``torch.distributed``).
        """
        if self.mode != 'batch' and _distributed_world_size() > 1:
            return _global_channel_moments(x)
        values_per_channel = x.numel() // self.num_channels
        if values_per_channel == 0:
            return None, None, None
        if self.mode != 'micro' and values_per_channel < 2:
            raise ValueError(
                f"BCN(mode='{self.mode}') needs more than 1 value per channel in training, "
                f'got input of shape {tuple(x.shape)}; use mode=\'micro\' for micro-batches')
        return (*channel_moments(x), None)

    @torch.no_grad()
    def _update_estimates(self, batch_mean: Tensor, batch_var: Tensor, count: Optional[Tensor],
                          x: Tensor) -> None:
        """Move the estimates toward this step's statistics (see the class docstring)."""
        if self.mode == 'micro':  # about the previous estimate, if there is one yet
            variance = second_moment_about(self.running_mean, batch_mean, batch_var,
                                           self.num_batches_tracked.clamp(max=1))
        else:
            variance = batch_var * self._unbiased_factor(x, count)
        if count is None:
            self.num_batches_tracked.add_(1)
            rate = estimate_rate(self.num_batches_tracked, self.rate_config)
        else:  # no update where all processes' batches were empty
            nonempty = (count > 0).long()
            self.num_batches_tracked.add_(nonempty)
            rate = estimate_rate(self.num_batches_tracked.clamp_min(1), self.rate_config)
            rate = rate * nonempty
        estimate_update(self.running_var, variance, rate)
        estimate_update(self.running_mean, batch_mean, rate)

    def _unbiased_factor(self, x: Tensor, count: Optional[Tensor]) -> Union[float, Tensor]:
        """``M / (M - 1)`` for ``M`` values per channel (local, or ``count`` of all
        processes)."""
        if count is None:
            values = x.numel() // self.num_channels
            return values / (values - 1)
        return count / (count - 1).clamp_min(1)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f'BCN({self.num_channels}) expects input of shape (N, '
                             f'{self.num_channels}, ...), got {tuple(x.shape)}')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Estimates without a step counter (old BN-style checkpoints) are estimates all the
        # same: they load as warmed up, never to be overwritten by a first-step rate of 1.
        key = prefix + 'num_batches_tracked'
        if key not in state_dict and prefix + 'running_mean' in state_dict:
            warm = math.ceil(1 / self.momentum) - 1 if self.momentum > 0 else 0
            state_dict[key] = torch.tensor(warm, dtype=torch.long)
        check_bcn_state(state_dict, prefix, unexpected_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f'{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, '
                f'momentum={self.momentum}, mode={self.mode!r}, '
                f'average_warmup={self.average_warmup}')
