"""Batch-Channel Normalization (Qiao et al., arXiv 1903.10520): ``mmws.BCN``.

BCN is a batch normalization followed by a channel (group) normalization. The batch part keeps
channels away from elimination singularities; the channel part makes the output independent of
the batch size. In micro-batch training (1–2 images per GPU) the batch part normalizes with
*estimated* statistics that move toward each batch's statistics.
"""
import math
import warnings
from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..registry import MODELS
from .functional import (Moments, batch_channel_norm, batch_channel_norm_reference,
                         channel_moments, estimate_schedule, estimate_update, moment_points,
                         point_basis, sample_moments, schedule_config, second_moment_about,
                         two_pass_batch_channel_norm)
from .load_checks import check_bcn_state

MODES = ('micro', 'batch', 'sync')
TRAINING_PATHS = ('auto', 'few_ops', 'two_pass')
#: ``training_path='auto'`` takes the two-pass path for inputs of at least this many elements:
#: below, the operators on ``(N, C)`` tensors, not the passes over the maps, set the time
#: (measured on a CPU, eager and compiled: docs/performance.md).
TWO_PASS_MIN_NUMEL = 2**19


def _distributed_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_channel_moments(local: Optional[Moments], local_count: int,
                            like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance over all elements of all processes' batches.

    Processes may have different ``N`` and spatial sizes, including ``N = 0``. One float64
    all-reduce adds ``[count, Σ x, Σ x²]`` (from each process's moments, so ``Σ x²`` is never
    formed from raw squares); nothing is read back to the host.

    Args:
        local: This process's ``(mean, var)``, ``(C,)`` each, or ``None`` when it is empty.
        local_count: Its number of values per channel.
        like: A tensor of the statistics' dtype and device, ``(C,)``.

    Returns:
        ``(mean, var, count)``: ``(C,)``, ``(C,)`` in ``like``'s dtype, and the global element
        count per channel (a float64 scalar tensor; the statistics are zeros where it is 0).
    """
    mean, var = local if local is not None else (like.new_zeros(like.shape), ) * 2
    mean, var = mean.double(), var.double()
    packed = torch.cat([mean.new_full((1, ), local_count), local_count * mean,
                        local_count * (var + mean.square())])
    dist.all_reduce(packed)
    count, sums, square_sums = packed[0], *packed[1:].chunk(2)
    global_mean = sums / count.clamp_min(1)
    global_var = (square_sums / count.clamp_min(1) - global_mean.square()).clamp_min(0)
    return global_mean.to(like.dtype), global_var.to(like.dtype), count


@MODELS.register_module()
class BCN(nn.GroupNorm):
    """Batch-Channel Normalization: ``BCN(x) = CN(BN(x))``.

    For ``x`` of shape ``(N, C, *S)``, with ``(m, v)`` the per-sample mean and biased variance
    of ``y`` over the ``C / G`` channels of group ``g`` and all positions, and ``(μ, σ²)`` by
    ``mode`` below (in ``eval()``, always the estimates)::

        y[n,c] = γ_bn[c] (x[n,c] - μ[c]) / sqrt(σ²[c] + eps) + β_bn[c]        (batch part)
        z[n,c] = γ[c] (y[n,c] - m[n,g]) / sqrt(v[n,g] + eps) + β[c]            (channel part)

    - ``'micro'``: the estimates, first moved toward the batch with rate ``r`` (EstBN):
      ``μ̂ ← (1-r) μ̂ + r μ_B``, ``σ̂² ← (1-r) σ̂² + r (σ²_B + (μ_B - μ̂_old)²)`` (the very
      first update about ``μ_B``); no gradient through them. Under ``torch.distributed`` the
      batch statistics are those of all processes' elements (one all-reduce).
    - ``'batch'`` / ``'sync'``: the batch's (all processes') statistics, as ``nn.BatchNorm2d``
      (``nn.SyncBatchNorm``); ``'batch'`` equals ``BatchNorm2d → GroupNorm``.

    ``r_t = max(r, 1 / (t + 1))`` with ``average_warmup`` (``t = num_batches_tracked``), else
    ``r``; ``momentum`` lives in a device buffer (changing it recompiles nothing). A step whose
    statistics are non-finite in a channel leaves that channel's estimates untouched and does
    not advance ``t``; ``num_batches_skipped`` (not saved in checkpoints) counts such steps,
    with one warning per layer at ``eval()``. A checkpoint without ``t`` loads as warmed up.
    A ``nn.GroupNorm`` subclass, not a ``_BatchNorm``: MMEngine's optimizer treats all four
    affines as norm parameters; ``convert_sync_batchnorm``, the runner's ``sync_bn`` and
    mmdet's ``norm_eval`` leave it alone (use ``mode='sync'``, ``momentum=0``).

    Args:
        num_features: Number of channels ``C``.
        num_groups: Channel groups ``G`` of the channel part; must divide ``C``.
        eps: Epsilon of both parts.
        momentum: The rate ``r`` of the estimates, in ``[0, 1]`` (0 freezes them).
        mode: ``'micro'``, ``'batch'`` or ``'sync'``.
        average_warmup: Whether the rate is ``max(r, 1 / (t + 1))``.
        training_path: ``'few_ops'`` (two native kernels each way; small maps), ``'two_pass'``
            (GroupNorm's passes over the activations; large inputs) or ``'auto'`` (by size:
            :data:`TWO_PASS_MIN_NUMEL`); the same function.

    Shape:
        Input ``(N, C, *S)``, any ``N >= 0`` (an empty input updates nothing but still joins
        the all-reduce); output the same shape, dtype and memory format. An fp16/bf16 input is
        normalized in float32 (returned as float32 under autocast, else in its own dtype).
    """

    _abbr_ = 'bcn'

    def __init__(self,
                 num_features: int,
                 num_groups: int = 32,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 mode: str = 'micro',
                 average_warmup: bool = True,
                 training_path: str = 'auto') -> None:
        if num_groups <= 0 or num_features <= 0 or num_features % num_groups != 0:
            raise ValueError(f'BCN needs num_features divisible by num_groups, got '
                             f'num_features={num_features}, num_groups={num_groups}')
        if mode not in MODES:
            raise ValueError(f'BCN mode must be one of {MODES}, got {mode!r}')
        if training_path not in TRAINING_PATHS:
            raise ValueError(f'BCN training_path must be one of {TRAINING_PATHS}, got '
                             f'{training_path!r}')
        if eps <= 0:
            raise ValueError(f'BCN eps must be > 0, got {eps}')
        super().__init__(num_groups, num_features, eps=eps, affine=True)
        self.mode = mode
        self.average_warmup = average_warmup
        self.training_path = training_path
        self.bn_weight = nn.Parameter(torch.ones(num_features))
        self.bn_bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))
        # Not in the state dict: this run's training steps with a non-empty batch, and those
        # of them with finite statistics, a diagnostic (checkpoints and their converter keep
        # the layout of BN-style estimates); see `num_batches_skipped`.
        for name in ('num_batches_seen', 'num_batches_clean'):
            self.register_buffer(name, torch.tensor(0, dtype=torch.long), persistent=False)
        # Constants the forward reads on the device: the rate schedule (see `momentum`), a
        # step's increment of `num_batches_seen` and the two-pass path's `point_basis`.
        self.register_buffer('rate_config', torch.zeros(3, 2), persistent=False)
        self.register_buffer('step_increment', torch.tensor(1, dtype=torch.long),
                             persistent=False)
        self.register_buffer('point_basis', point_basis(), persistent=False)
        self.momentum = momentum
        self._warned_skips = False

    @property
    def num_features(self) -> int:
        return self.num_channels

    @property
    def num_batches_skipped(self) -> Tensor:
        """Training steps of this run whose statistics were non-finite (not counted in
        ``num_batches_tracked``); restarts at 0 when a checkpoint is loaded."""
        return self.num_batches_seen - self.num_batches_clean

    @property
    def momentum(self) -> float:
        """The update rate ``r`` of the estimates."""
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f'BCN momentum must be in [0, 1], got {value}')
        self._momentum = float(value)
        # copy_ from host values: a device copy, no synchronization.
        self.rate_config.copy_(torch.tensor(schedule_config(self._momentum, self.average_warmup),
                                            dtype=torch.float64))

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # The rate in the new dtype from the exact value (not float32's 0.1 cast to float64).
        if hasattr(self, '_momentum'):
            self.momentum = self._momentum
        return self

    def reset_running_stats(self) -> None:
        """Reset the estimates to mean 0, variance 1 and the step counts to 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()
        self.num_batches_seen.zero_()
        self.num_batches_clean.zero_()

    def reset_parameters(self) -> None:
        super().reset_parameters()  # the channel part's affine
        if hasattr(self, 'bn_weight'):  # nn.GroupNorm.__init__ calls this before they exist
            nn.init.ones_(self.bn_weight)
            nn.init.zeros_(self.bn_bias)
            self.reset_running_stats()

    def update_rate(self) -> Tensor:
        """The rate ``r_t`` of the next estimate update (a scalar tensor on the device)."""
        return estimate_schedule(self.num_batches_tracked, self.rate_config)[0]

    def train(self, mode: bool = True) -> 'BCN':
        super().train(mode)
        if not mode:
            self._warn_skipped_updates()
        return self

    def _warn_skipped_updates(self) -> None:
        """Once per layer: say that training steps were skipped (reads one counter: this runs
        at ``eval()``, not in a training step)."""
        if self._warned_skips:
            return
        skipped = int(self.num_batches_skipped)
        if skipped:
            self._warned_skips = True
            warnings.warn(
                f'{self!r}: {skipped} training step(s) had non-finite batch statistics (NaN or '
                'inf in the input); the estimates of those channels were left unchanged and '
                'the steps not counted (num_batches_skipped). Look for an overflow upstream '
                '(e.g. fp16 activations) or bad input data.', RuntimeWarning, stacklevel=4)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if torch.is_autocast_enabled(x.device.type):
            # Like GroupNorm under autocast: normalize in float32, return float32.
            with torch.autocast(x.device.type, enabled=False):
                return self._normalize(x.float())
        if x.dtype != self.weight.dtype and x.is_floating_point() and (
                torch.finfo(x.dtype).bits < torch.finfo(self.weight.dtype).bits):
            # A lower-precision input outside autocast, as nn.GroupNorm takes it: normalized
            # in the layer's precision, returned in the input's.
            return self._normalize(x.to(self.weight.dtype)).to(x.dtype)
        return self._normalize(x)

    def _path(self, x: Tensor) -> str:
        """The training path for ``x``, chosen on the host from its size."""
        if x.numel() == 0:
            return 'few_ops'  # nothing to pass over: only the all-reduces matter
        if self.training_path != 'auto':
            return self.training_path
        return 'two_pass' if x.numel() >= TWO_PASS_MIN_NUMEL else 'few_ops'

    def _normalize(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._eval_forward(x)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise RuntimeError('BCN can only be traced or exported in eval() mode')
        path = self._path(x)
        # 1. This step's statistics: of the local batch, or of all processes' batches.
        if path == 'two_pass':
            sample_mean, inv_std, scratch = sample_moments(x)
            points, local_mean = moment_points(sample_mean, inv_std, self.point_basis)
            points_var, points_mean = torch.var_mean(points, [0, 2], correction=0)
            local = local_mean, points_var
        else:
            local = channel_moments(x) if x.numel() else None
        batch_mean, batch_var, count = self._batch_statistics(x, local)
        # 2. The estimate update.
        if batch_mean is not None:
            self._update_estimates(batch_mean, batch_var, count, x)
        # 3. The statistics the batch part normalizes with.
        if self.mode == 'micro' or batch_mean is None:
            # Copies: the backward needs this step's estimates, and a shared module (a head
            # applied to every FPN level) updates the buffers again before it runs.
            mean, var = self.running_mean.clone(), self.running_var.clone()
            grad_mode = 'estimates'
        else:
            mean, var = batch_mean, batch_var
            grad_mode = 'sync' if count is not None else 'batch'
        # 4. The normalization.
        if path == 'two_pass':
            # The batch part's mean about the points' origin, the local batch mean.
            center = points_mean if grad_mode == 'batch' else mean.to(x.dtype) - local_mean
            return two_pass_batch_channel_norm(x, sample_mean, inv_std, points, center,
                                               var.to(x.dtype), self.bn_weight, self.bn_bias,
                                               self.weight, self.bias, self.num_groups,
                                               self.eps, grad_mode, count, self.point_basis,
                                               scratch)
        return batch_channel_norm(x, mean.to(x.dtype), var.to(x.dtype), self.bn_weight,
                                  self.bn_bias, self.weight, self.bias, self.num_groups, self.eps,
                                  grad_mode, count)

    def _eval_forward(self, x: Tensor) -> Tensor:
        """The estimates, no update: the plain composition (it traces and exports)."""
        if x.numel() == 0:
            return x.clone()
        return batch_channel_norm_reference(x, self.running_mean.to(x.dtype),
                                            self.running_var.to(x.dtype), self.bn_weight,
                                            self.bn_bias, self.weight, self.bias,
                                            self.num_groups, self.eps)

    def _batch_statistics(
            self, x: Tensor,
            local: Optional[Moments]) -> Tuple[Optional[Tensor], Optional[Tensor],
                                                Optional[Tensor]]:
        """``(mean, biased var, global count or None)`` of this training step, from the
        local per-channel moments (``None`` for an empty input).

        The statistics are ``None`` when there is nothing to take them from (an empty batch
        on a single process). ``count`` is set when they come from an all-reduce (micro and
        sync modes under ``torch.distributed``).
        """
        values_per_channel = x.numel() // self.num_channels
        if self.mode != 'batch' and _distributed_world_size() > 1:
            return _global_channel_moments(local, values_per_channel, self.running_mean)
        if values_per_channel == 0:
            return None, None, None
        if self.mode != 'micro' and values_per_channel < 2:
            raise ValueError(
                f"BCN(mode='{self.mode}') needs more than 1 value per channel in training, "
                f'got input of shape {tuple(x.shape)}; use mode=\'micro\' for micro-batches')
        return (*local, None)

    @torch.no_grad()
    def _update_estimates(self, batch_mean: Tensor, batch_var: Tensor, count: Optional[Tensor],
                          x: Tensor) -> None:
        """Move the estimates toward this step's statistics where they are finite (see the
        class docstring), on the device."""
        rate, has_center = estimate_schedule(self.num_batches_tracked, self.rate_config)
        if self.mode == 'micro':  # about the previous estimate, if there is one yet
            variance = second_moment_about(self.running_mean, batch_mean, batch_var, has_center)
        else:
            variance = batch_var * self._unbiased_factor(x, count)
        # A non-finite value in a channel makes its mean non-finite and its variance NaN (or
        # inf), and a non-finite mean makes the micro second moment non-finite: one check.
        finite = torch.isfinite(variance)
        clean = finite.all()
        seen = self.step_increment
        if count is not None:  # no update where all processes' batches were empty
            seen = count > 0
            rate = rate * seen
            clean = clean & seen
        # Under torch.compile the backward cannot re-read the buffers after this in-place
        # update (pytorch/pytorch#197039: the min-cut partitioner may recompute a saved value
        # from the graph's inputs, here the buffers it has just overwritten): the estimates
        # the batch part normalizes with are the outputs of a multi-tensor `_foreach_lerp`,
        # which is not on the partitioner's recomputable list, so it saves them.
        estimate_update([self.running_mean, self.running_var], [batch_mean, variance], rate,
                        finite)
        torch._foreach_add_([self.num_batches_tracked, self.num_batches_clean,
                             self.num_batches_seen], [clean, clean, seen])

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
        with torch.no_grad():  # the skipped steps are counted per run
            self.num_batches_seen.zero_()
            self.num_batches_clean.zero_()

    def extra_repr(self) -> str:
        return (f'{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, '
                f'momentum={self.momentum}, mode={self.mode!r}, '
                f'average_warmup={self.average_warmup}, training_path={self.training_path!r}')
