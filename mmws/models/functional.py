"""The maths of Weight Standardization and Batch-Channel Normalization as pure tensor functions.

Qiao et al., *Micro-Batch Training with Batch-Channel Normalization and Weight Standardization*
(arXiv 1903.10520). The modules in :mod:`mmws.models` hold state and registration and call these
functions; the fusion tool, the hooks and the tests share the same definitions.

Notation: ``x`` has shape ``(N, C, *S)`` with ``M = prod(S)`` spatial positions, ``G`` groups of
``K = C / G`` channels. BCN is ``CN(BN(x))``::

    BN:  y[n,c]   = a[c] * x[n,c] + b[c],   a = γ_bn / sqrt(var + eps),  b = β_bn - a * mean
    CN:  z[n,c]   = γ[c] * (y[n,c] - m[n,g]) / sqrt(v[n,g] + eps) + β[c]

where (mean, var) are the per-channel statistics the batch part normalizes with (estimates, or
the batch's own) and (m, v) the per-sample, per-group biased statistics of ``y``.

No function here synchronizes with the host (no ``.item()``, no branching on a tensor's
value): rates, counts and masks stay on the device. BCN has two training paths computing the
same function: :func:`batch_channel_norm` (two native kernels each way: few operators, for small
maps) and :func:`two_pass_batch_channel_norm` (GroupNorm's passes over the activations, for
large maps).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

Moments = Tuple[Tensor, Tensor]


class _StandardizeWeight(torch.autograd.Function):
    """``Ŵ = (W - μ) / σ`` per row of ``W`` (shape ``(O, n)``), for both places of ``eps``.

    Forward: one ``native_group_norm`` with one group per row (its row statistics are a
    vectorized one-pass Welford, several times faster on the CPU than ``native_batch_norm``'s)
    gives ``μ``, ``q = 1 / sqrt(var_n + ε)`` and ``k (W - μ) q`` (``k = sqrt(m / n)`` as the
    per-row weight ``k_row``, or none for ``k = 1``). ``eps`` inside the root: ``ε = k² eps``
    and that is ``Ŵ``. ``eps`` outside: ``ε`` is the smallest normal (so ``q`` stays finite
    for a constant filter) and ``Ŵ = k (W - μ) q / E`` with ``E = 1 + k eps q``, in place.

    Backward: one ``native_batch_norm_backward`` (train mode; it centres ``W`` before its
    reductions, so a filter whose mean dwarfs its spread keeps its precision) with per-row
    ``weight`` A and ``invstd`` B: ``A = k``, ``B = q`` inside the root; ``A = k / sqrt(E)``,
    ``B = q / sqrt(E)`` outside (``A B = 1 / σ``, ``A / B = (m / n) s``). A constant filter
    gets the exact limit ``(g - mean(g)) / eps`` outside the root.
    """

    @staticmethod
    def forward(ctx, flat: Tensor, eps: float, k: float, k_row: Optional[Tensor],
                eps_inside_sqrt: bool) -> Tensor:
        rows, n = flat.shape
        gn_eps = eps * k * k if eps_inside_sqrt else torch.finfo(flat.dtype).tiny
        out, mean, invstd = torch.native_group_norm(flat.unsqueeze(0), k_row, None, 1, rows,
                                                    n, rows, gn_eps)
        mean, invstd, out = mean.view(rows), invstd.view(rows), out.view(rows, n)
        ctx.k, ctx.eps_inside_sqrt = k, eps_inside_sqrt
        if eps_inside_sqrt:
            ctx.save_for_backward(flat, mean, invstd, k_row)
            return out
        scale = torch.rsub(invstd, 1.0, alpha=-eps * k)  # E = k σ q
        ctx.save_for_backward(flat, mean, invstd, scale)
        # The kernel's output is ours alone: scale it in place (no second allocation).
        return out.div_(scale.unsqueeze(1))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        flat, mean, invstd, coefficient = ctx.saved_tensors
        if ctx.eps_inside_sqrt:
            weight = coefficient  # k_row (None for k = 1)
        else:
            root = coefficient.rsqrt()
            weight = root if ctx.k == 1 else root * ctx.k  # A = k / sqrt(E)
            invstd = invstd * root  # B = q / sqrt(E)
        grad = torch.ops.aten.native_batch_norm_backward(grad_out.unsqueeze(0),
                                                         flat.unsqueeze(0), weight, None, None,
                                                         mean, invstd, True, 0.0,
                                                         [True, False, False])[0]
        return grad.squeeze(0), None, None, None, None


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`standardize_weight` computes a weight's statistics in: float64 for a
    float64 weight, float32 for every other (fp16/bf16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unbiased_row_scale(num_rows: int, row_size: int, **factory_kwargs) -> Tensor:
    """``sqrt((n - 1) / n)`` for each of ``num_rows`` filters of ``n = row_size`` entries.

    The per-filter weight with which the normalization kernels turn their biased variance
    into the unbiased one in :func:`standardize_weight`. A module that standardizes every step
    holds it (as :class:`~mmws.models.ConvWS` does) so that no step spends an operator on it.

    Returns:
        Shape ``(num_rows,)``; ``factory_kwargs`` as ``torch.full`` (dtype, device).
    """
    return torch.full((num_rows,), ((row_size - 1) / row_size)**0.5, **factory_kwargs)


def standardize_weight(weight: Tensor,
                       eps: float = 1e-5,
                       unbiased: bool = True,
                       eps_inside_sqrt: bool = False,
                       row_scale: Optional[Tensor] = None) -> Tensor:
    """Standardize each output filter of a conv weight (Weight Standardization).

    For ``weight`` of shape ``(O, I/groups, *kernel)`` and each filter ``W_o`` with
    ``n = I/groups * prod(kernel)`` entries::

        μ_o = mean(W_o)
        σ_o = std(W_o) + eps          (eps_inside_sqrt=False, default)
        σ_o = sqrt(var(W_o) + eps)    (eps_inside_sqrt=True)
        Ŵ_o = (W_o - μ_o) / σ_o

    with the variance unbiased (``1/(n-1)``, default) or biased (``1/n``). The default form
    reproduces the released GN+WS weights (the authors' PyTorch code and mmcv's ``ConvWS2d``);
    ``unbiased=True, eps_inside_sqrt=True`` is the authors' BCN+WS ImageNet code; the paper text
    uses ``unbiased=False, eps_inside_sqrt=False``.

    Both forms are one group-norm kernel forward (each filter a group) and one batch-norm
    backward kernel (:class:`_StandardizeWeight`); the unbiased variance is the kernel's
    per-filter weight ``k = sqrt((n-1)/n)``: ``(W - μ) / sqrt(var_b / k² + eps)`` equals
    ``k (W - μ) / sqrt(var_b + k² eps)``.

    The statistics are computed in float32 (or float64) whatever the weight's dtype, and the
    gradient flows through them. A constant filter standardizes to zeros (default form: up to
    the rounding of ``(W - μ) / eps``) with the exact gradient there, ``(g - mean(g)) / eps``.

    Args:
        weight: Conv weight, shape ``(O, I/groups, *kernel)``, at least 2 entries per filter.
        eps: Added to the std (or the variance, see ``eps_inside_sqrt``).
        unbiased: Whether the variance divides by ``n - 1`` instead of ``n``.
        eps_inside_sqrt: Whether ``eps`` is added inside the square root.
        row_scale: :func:`unbiased_row_scale` of the weight's shape, held by the caller
            (used when ``unbiased``; built here, one operator, when ``None`` or not in the
            statistics' dtype).

    Returns:
        The standardized weight, same shape and memory format (contiguous or channels_last),
        in the statistics' dtype (float32 or float64).
    """
    num_rows, n = weight.shape[0], math.prod(weight.shape[1:])
    if n < 2:
        raise ValueError(f'Weight Standardization needs at least 2 weights per filter, got {n} '
                         f'(weight shape {tuple(weight.shape)})')
    stats_dtype = statistics_dtype(weight.dtype)
    # A filter's statistics do not depend on the order of its entries: take the rows in memory
    # order, so that a channels_last weight is neither copied here nor in the backward.
    channels_last = (weight.dim() == 4 and not weight.is_contiguous()
                     and weight.is_contiguous(memory_format=torch.channels_last))
    source = weight.permute(0, 2, 3, 1) if channels_last else weight
    flat = source.to(stats_dtype).flatten(1)
    k = ((n - 1) / n)**0.5 if unbiased else 1.0
    if not unbiased:
        row_scale = None
    elif row_scale is None or row_scale.dtype != stats_dtype:
        row_scale = unbiased_row_scale(num_rows, n, dtype=stats_dtype, device=flat.device)
    # Under autocast, the reductions would run in fp16/bf16: keep them in stats_dtype.
    with torch.autocast(flat.device.type, enabled=False):
        out = _StandardizeWeight.apply(flat, eps, k, row_scale, eps_inside_sqrt).view_as(source)
    return out.permute(0, 3, 1, 2) if channels_last else out


def channel_moments(x: Tensor) -> Moments:
    """Per-channel mean and biased variance over the batch and spatial dims, in one pass.

    Eager: ``batch_norm_update_stats``, the batch-norm statistics kernel on its own (as accurate
    as ``var_mean`` and several times faster on the CPU, where ``var_mean`` over non-innermost
    dims is a generic reduction). Under ``torch.compile``: ``var_mean``, for which the compiler
    generates a fused reduction (``batch_norm_update_stats`` has no fake-tensor kernel: a traced
    call breaks as soon as a shape is dynamic). No gradient flows through them.

    Args:
        x: Input, shape ``(N, C, *S)`` with ``N * prod(S) > 0``.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.
    """
    if torch.compiler.is_compiling():
        var, mean = torch.var_mean(x.detach(), [0, *range(2, x.dim())], correction=0)
        return mean, var
    return torch.batch_norm_update_stats(x.detach(), None, None, 0.0)


def sample_moments(x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Per-(sample, channel) mean ``μ`` and inverse standard deviation ``r`` in one pass.

    ``r = 1 / sqrt(v + tiny)`` with ``v`` the biased variance over the spatial dims and ``tiny``
    the dtype's smallest normal number: finite for a constant channel, and ``1 / r²`` is ``v``
    to within ``tiny``. Eager on the CPU, for a contiguous input: the group-norm kernel with one
    channel per group, a vectorized pass about twice as fast there as ``var_mean``, which also
    writes a tensor of ``x``'s shape (returned as scratch, for the output pass to overwrite
    instead of allocating its own); elsewhere ``var_mean``. No gradient flows through them.

    Args:
        x: Input, shape ``(N, C, *S)`` with ``N * C * prod(S) > 0``.

    Returns:
        ``(mean, inv_std, scratch)``: ``(N, C)`` each, and a contiguous tensor like ``x`` or
        ``None``.
    """
    x = x.detach()
    n, c, m = _group_norm_shape(x)
    tiny = torch.finfo(x.dtype).tiny
    if _flat_kernels(x):
        scratch, mean, inv_std = torch.native_group_norm(x, None, None, n, c, m, c, tiny)
        return mean, inv_std, scratch
    var, mean = torch.var_mean(x.view(n, c, -1) if x.dim() == 2 else x,
                               list(range(2, max(x.dim(), 3))), correction=0)
    return mean.view(n, c), torch.rsqrt(var.view(n, c) + tiny), None


def point_basis(**factory_kwargs) -> Tensor:
    """``[[1/2, 1/2], [1/2, -1/2]]``: ``p @ basis`` is the half-sum and half-difference of two
    points ``p`` (``(..., 2)``). A module that calls :func:`moment_points` every step holds it
    (as :class:`~mmws.models.BCN` does), so that no step spends an operator on it;
    ``factory_kwargs`` as ``torch.tensor`` (dtype, device)."""
    return torch.tensor([[0.5, 0.5], [0.5, -0.5]], **factory_kwargs)


def moment_points(sample_mean: Tensor, inv_std: Tensor,
                  basis: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Two points per (sample, channel) with that sample's mean and variance in the channel,
    about the batch's mean.

    ``p[n, c] = μ[n, c] - μ̄[c] ± σ[n, c]`` with ``σ = 1 / r`` and ``μ̄ = mean_n μ``. Over a
    channel's ``2N`` points the mean is 0 and the biased variance the batch's,
    ``E_n[v] + Var_n[μ]`` (the law of total variance; the samples are of equal size), and
    every statistic of the batch that BCN takes (the batch part's per-channel moments, the
    channel part's per-(sample, group) moments after a per-channel affine) is that of the
    points: the normalization kernels can run on ``(N, C, 2)`` points instead of the maps.

    Args:
        sample_mean, inv_std: ``(N, C)``, :func:`sample_moments` of ``x``.
        basis: :func:`point_basis` (built here when ``None``).

    Returns:
        ``(points, batch_mean)``: ``(N, C, 2)`` and ``μ̄``, ``(C,)``.
    """
    batch_mean = sample_mean.mean(0)
    offset = (sample_mean - batch_mean).unsqueeze(-1)
    if basis is None:
        basis = point_basis(dtype=sample_mean.dtype, device=sample_mean.device)
    points = torch.addcmul(offset, inv_std.reciprocal().unsqueeze(-1), basis[1], value=2)
    return points, batch_mean


def schedule_config(rate: float, warmup: bool) -> List[List[float]]:
    """The ``(3, 2)`` table :func:`estimate_schedule` reads: ``[offsets, lows, highs]``.

    Column 0 is the rate's denominator ``t + 1`` clamped to ``[1, 1/r]`` with the warm-up
    (``r_t = max(r, 1 / (t + 1))``) or to ``[1/r, 1/r]`` without (``r_t = r``; ``1/0 = inf``
    gives ``r_t = 0``: frozen estimates, warm-up or not); column 1 is ``t`` clamped to
    ``[0, 1]``.
    """
    inverse = 1 / rate if rate > 0 else math.inf
    return [[1.0, 0.0], [1.0 if warmup and rate > 0 else inverse, 0.0], [inverse, 1.0]]


def estimate_schedule(steps: Tensor, config: Tensor) -> Tuple[Tensor, Tensor]:
    """The rate of the next estimate update and whether there is an estimate yet, on the
    device, from one clamp: ``r_t = max(r, 1 / (t + 1))`` (or ``r``) and ``min(t, 1)``.

    Args:
        steps: ``t``, the updates so far (long scalar).
        config: :func:`schedule_config` as a ``(3, 2)`` tensor.

    Returns:
        ``(r_t, has_center)``, scalar tensors of ``config``'s dtype.
    """
    bounds = torch.clamp(steps + config[0], config[1], config[2])
    return bounds[0].reciprocal(), bounds[1]


def second_moment_about(center: Tensor, batch_mean: Tensor, batch_var: Tensor,
                        has_center: Tensor) -> Tensor:
    """Per-channel second moment of the batch about ``center``: ``mean((x - center)²)``.

    ``= σ²_B + (μ_B - center)²``. Where ``has_center`` is 0 (nothing estimated yet) the
    moment is about the batch mean, ``σ²_B``.

    Args:
        center: ``(C,)``, the previous mean estimate ``μ̂``.
        batch_mean, batch_var: ``(C,)``, the batch's mean and biased variance.
        has_center: 0 or 1, a scalar tensor.

    Returns:
        ``(C,)``.
    """
    offset = (batch_mean - center) * has_center
    return torch.addcmul(batch_var, offset, offset)


def estimate_update(estimates: Sequence[Tensor], batch_values: Sequence[Tensor], rate: Tensor,
                    finite: Tensor) -> None:
    """Move estimates toward batch statistics in place where these are finite.

    ``μ̂ ← (1 - r) μ̂ + r μ_batch`` in the channels where ``finite``; the others keep their
    value exactly (their target is the estimate itself: a masked rate would still write
    ``0 · NaN``). One multi-tensor ``lerp_`` for all estimates.

    Args:
        estimates: Running estimate buffers, ``(C,)`` each, updated in place.
        batch_values: This step's statistics, same shapes.
        rate: Update rate ``r`` in ``[0, 1]``, a scalar tensor.
        finite: ``(C,)`` bool, the channels to update.
    """
    targets = [torch.where(finite, value.to(estimate.dtype), estimate)
               for estimate, value in zip(estimates, batch_values)]
    torch._foreach_lerp_(list(estimates), targets, [rate] * len(targets))


def batch_affine(mean: Tensor, var: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                 eps: float) -> Tuple[Tensor, Tensor]:
    """The batch part of BCN as a per-channel affine ``y = a x + b``.

    ``a = γ_bn / sqrt(var + eps)``, ``b = β_bn - a * mean``; all shapes ``(C,)``.
    """
    scale = bn_weight * torch.rsqrt(var + eps)
    return scale, bn_bias - scale * mean


def _group_norm_shape(x: Tensor) -> Tuple[int, int, int]:
    """``(N, C, M)`` of ``x``, as the native group-norm kernels take them."""
    n, c = x.shape[:2]
    return n, c, x[0, 0].numel() if n else int(torch.Size(x.shape[2:]).numel())


#: Devices on which the two-pass path's passes over the maps run as batch-norm kernels over the
#: ``(1, N·C, M)`` view; elsewhere as plain expressions. ``benchmarks/gpu_check.py`` checks and
#: times those kernels on CUDA (its ``two_pass_flat`` variants) before CUDA may join.
FLAT_KERNEL_DEVICES = ('cpu', )


def _flat_kernels(x: Tensor) -> bool:
    """Whether the per-(sample, channel) passes run as native kernels over the
    ``(1, N·C, M)`` view (:data:`FLAT_KERNEL_DEVICES`, eager, contiguous; the compiler fuses
    the plain expressions)."""
    return (x.device.type in FLAT_KERNEL_DEVICES and x.is_contiguous()
            and not torch.compiler.is_compiling())


class _BatchChannelNorm(torch.autograd.Function):
    """``z = GN(BN(x))`` on the native kernels, two forward and two backward.

    Forward: ``y = native_batch_norm(x)`` with the given per-channel ``(mean, var)`` (an
    element-wise pass), ``z = native_group_norm(y)``. Backward:
    ``dy = native_group_norm_backward(dz)`` and
    ``dx = native_batch_norm_backward(dy)``, with ``(mean, var)`` constants (``'estimates'``)
    or this batch's statistics (``'batch'``; ``'sync'``: of all processes, one all-reduce of
    the per-channel ``[Σ dy, Σ dy x̂]`` as ``nn.SyncBatchNorm``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, var: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                weight: Tensor, bias: Tensor, num_groups: int, eps: float, grad_mode: str,
                count: Optional[Tensor]) -> Tensor:
        ctx.num_groups, ctx.eps, ctx.grad_mode = num_groups, eps, grad_mode
        if x.numel() == 0:
            ctx.save_for_backward(x, mean, var, bn_weight, count)
            return x.clone()
        n, c, m = _group_norm_shape(x)
        y = torch.native_batch_norm(x, bn_weight, bn_bias, mean, var, False, 0.0, eps)[0]
        out, group_mean, group_rstd = torch.native_group_norm(y, weight, bias, n, c, m,
                                                              num_groups, eps)
        # y is saved, not recomputed: this path serves small maps, where an operator costs
        # more than the memory.
        ctx.save_for_backward(x, y, mean, var, bn_weight, weight, group_mean, group_rstd, count)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if grad_out.numel() == 0:
            return _BatchChannelNorm._empty_backward(ctx, grad_out)
        x, y, mean, var, bn_weight, weight, group_mean, group_rstd, count = ctx.saved_tensors
        n, c, m = _group_norm_shape(x)
        eps, grad_mode = ctx.eps, ctx.grad_mode
        grad_y, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            grad_out.contiguous(memory_format=_memory_format(y)), y, group_mean, group_rstd,
            weight, n, c, m, ctx.num_groups, [True, *ctx.needs_input_grad[5:7]])
        bn_grad_mask = [ctx.needs_input_grad[0], *ctx.needs_input_grad[3:5]]
        if grad_mode == 'batch':
            grad_x, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
                grad_y, x, bn_weight, None, None, mean, torch.rsqrt(var + eps), True, eps,
                bn_grad_mask)
        else:
            # 'sync' needs the sums dγ_bn, dβ_bn for the input gradient too.
            mask = bn_grad_mask if grad_mode == 'estimates' else [True, True, True]
            grad_x, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
                grad_y, x, bn_weight, mean, var, None, None, False, eps, mask)
            if grad_mode == 'sync':
                sum_grad, sum_grad_normalized = _all_reduce_sums(grad_bn_bias, grad_bn_weight)
                grad_x = _sync_input_grad(grad_x, x, mean, var, bn_weight, sum_grad,
                                          sum_grad_normalized, count, eps)
        return (grad_x, None, None, grad_bn_weight, grad_bn_bias, grad_weight, grad_bias, None,
                None, None, None)

    @staticmethod
    def _empty_backward(ctx, grad_out: Tensor):
        """No samples here; in sync mode this process still joins its peers' all-reduce."""
        x, mean, var, bn_weight, count = ctx.saved_tensors
        if ctx.grad_mode == 'sync':
            zeros = mean.new_zeros(mean.shape)
            _all_reduce_sums(zeros, zeros)
        return (grad_out.clone(), ) + (None, ) * 10


def _all_reduce_sums(sum_grad: Tensor, sum_grad_normalized: Tensor) -> Tuple[Tensor, Tensor]:
    """``[Σ dy, Σ dy x̂]`` per channel, added over all processes (one float64 all-reduce; every
    training path of every process calls it with the same layout)."""
    sums = torch.cat([sum_grad, sum_grad_normalized]).to(torch.float64)
    dist.all_reduce(sums)
    return sums.to(sum_grad.dtype).chunk(2)


def _sync_input_grad(grad_x_local: Tensor, x: Tensor, mean: Tensor, var: Tensor,
                     bn_weight: Tensor, sum_grad: Tensor, sum_grad_normalized: Tensor,
                     count: Tensor, eps: float) -> Tensor:
    """``dx = a dy - a / count (Σ_all dy + x̂ Σ_all dy x̂)`` from ``a dy`` and the global sums;
    ``x̂ = (x - mean) ρ`` with ``ρ = 1 / sqrt(var + eps)``, so the correction is ``x k1 + k0``
    per channel."""
    inv_std = torch.rsqrt(var + eps)
    scale = bn_weight * inv_std / count.to(mean.dtype).clamp_min(1)
    x_coef = -scale * inv_std * sum_grad_normalized
    const = -scale * sum_grad - x_coef * mean
    shape = (1, -1) + (1, ) * (x.dim() - 2)
    return grad_x_local.add_(const.view(shape)).addcmul_(x, x_coef.view(shape))


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def batch_channel_norm(x: Tensor,
                       mean: Tensor,
                       var: Tensor,
                       bn_weight: Tensor,
                       bn_bias: Tensor,
                       weight: Tensor,
                       bias: Tensor,
                       num_groups: int,
                       eps: float,
                       grad_mode: str = 'estimates',
                       count: Optional[Tensor] = None) -> Tensor:
    """BCN with given batch-part statistics, ``z = GN(BN(x; mean, var))``, in few operators.

    Two native kernels forward and two backward: the path for small maps, where the number
    of operators sets the time. Saves ``x``, ``BN(x)`` and ``(C,)`` tensors for the backward.

    Args:
        x: Input, shape ``(N, C, *S)``.
        mean, var: Per-channel statistics of the batch part, ``(C,)`` (``var`` biased).
        bn_weight, bn_bias: Batch-part affine ``γ_bn, β_bn``, ``(C,)``.
        weight, bias: Channel-part affine ``γ, β``, ``(C,)``.
        num_groups: ``G``.
        eps: Epsilon of both parts.
        grad_mode: How the gradient treats ``(mean, var)``: ``'estimates'`` (constants),
            ``'batch'`` (this batch's statistics) or ``'sync'`` (statistics of all processes'
            elements, ``count`` of them; the backward all-reduces).
        count: The global element count per channel, a scalar tensor (``'sync'`` only).

    Returns:
        ``z``, same shape, dtype and memory format as ``x``.
    """
    return _BatchChannelNorm.apply(x, mean, var, bn_weight, bn_bias, weight, bias, num_groups,
                                   eps, grad_mode, count)


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """``(N, C)`` as ``(N, C, 1, ...)``, broadcasting against ``x``."""
    return t.view(*t.shape, *(1, ) * (x.dim() - 2))


def _affine_pass(x: Tensor, center: Tensor, inv_std: Tensor, var: Optional[Tensor],
                 scale: Tensor, shift: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``scale r (x - center) + shift`` with ``(N, C)`` coefficients, ``r = inv_std``
    ``= 1 / sqrt(var)``: one pass.

    An inference-mode batch norm over the ``(1, N·C, M)`` view with ``var`` (given where
    :func:`_flat_kernels`; 2-3× faster on the CPU than a broadcasting ``addcmul``), otherwise
    the plain expression with ``inv_std``, in ``x``'s layout. ``out``: a contiguous tensor like
    ``x`` to write into (flat kernels only; otherwise a new one).
    """
    if var is not None and _flat_kernels(x):
        n, c, m = _group_norm_shape(x)
        # Written into a tensor of x's shape, not returned as a view of the kernel's output:
        # a Function's output that is a view cannot be modified in place (ReLU(inplace=True)).
        out = torch.empty_like(x) if out is None else out
        unused = [torch.empty(0, dtype=x.dtype, device=x.device) for _ in range(2)]
        torch.native_batch_norm(x.view(1, n * c, m), scale.view(-1), shift.view(-1),
                                center.view(-1), var.view(-1), False, 0.0, 0.0,
                                out=(out.view(1, n * c, m), *unused))
        return out
    factor = scale * inv_std
    return torch.addcmul(_channel_view(torch.addcmul(shift, factor, center, value=-1), x).to(
        x.dtype), x, _channel_view(factor, x).to(x.dtype))


def _reduction_pass(grad_out: Tensor, x: Tensor, center: Tensor,
                    inv_std: Tensor) -> Tuple[Tensor, Tensor]:
    """``(Σ dz, r Σ dz (x - center))`` per (sample, channel), ``(N, C)`` each: one pass.

    With :func:`_flat_kernels`, the batch-norm backward kernel over the ``(1, N·C, M)`` view
    (its ``grad_bias`` and ``grad_weight``); otherwise two fused reductions.
    """
    n, c, m = _group_norm_shape(x)
    if _flat_kernels(x) and grad_out.dtype == center.dtype:
        _, centred, total = torch.ops.aten.native_batch_norm_backward(
            grad_out.contiguous().view(1, n * c, m), x.view(1, n * c, m), None, None, None,
            center.view(-1), inv_std.view(-1), True, 0.0, [False, True, True])
        return total.view(n, c), centred.view(n, c)
    dims = list(range(2, x.dim()))
    grad_out = grad_out.to(center.dtype)
    centred = (grad_out * (x.to(center.dtype) - _channel_view(center, x))).sum(dims)
    return grad_out.sum(dims), centred * inv_std


def _half_sums(points: Tensor, basis: Tensor) -> Tuple[Tensor, Tensor]:
    """``(p+ + p-, p+ - p-)`` scaled by ``basis`` (:func:`point_basis`, times a factor), for
    points ``p`` of shape ``(N, C, 2)``: two contiguous ``(N, C)`` tensors (one ``mm``; the
    CPU batch-norm kernels take a slow path for strided per-channel coefficients)."""
    n, c, _ = points.shape
    return (basis @ points.view(n * c, 2).t()).view(2, n, c).unbind(0)


class _TwoPassBatchChannelNorm(torch.autograd.Function):
    """``z = GN(BN(x))`` at GroupNorm's memory traffic: the normalization kernels run on
    :func:`moment_points`, the maps see one statistics pass and one output pass each way.

    Every mode makes ``z`` a per-(sample, channel) affine of ``x``, ``z = A (x - μ) + B``.
    Forward: the batch part (an inference-mode batch norm with the given ``(center, var)``)
    and the channel part (a group norm) on the points ``μ - μ̄ ± σ``; their outputs are
    ``B ± A σ``, so ``B`` and ``A σ`` are half their sum and half their difference, and one
    pass over ``x`` writes ``z``. Backward: one reduction pass gives ``S0 = Σ dz`` and
    ``S1 = Σ dz (x - μ)`` per (sample, channel); the output points' gradient
    ``(S0 ± r S1) / 2`` has the same sums over the points as ``dz`` over the values, so the
    group-norm and batch-norm backward kernels on the points give the four parameter
    gradients and, in their input gradient ``A dZ + (M / 2)(R ± Q σ)``, the coefficients of
    ``dx = A dz + Q (x - μ) + R`` (batch statistics' terms included); one pass writes ``dx``.
    Saves ``x`` and ``(N, C)``-sized tensors.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sample_mean: Tensor, inv_std: Tensor, points: Tensor,
                center: Tensor, var: Tensor, bn_weight: Tensor, bn_bias: Tensor, weight: Tensor,
                bias: Tensor, num_groups: int, eps: float, grad_mode: str,
                count: Optional[Tensor], half_basis: Tensor,
                scratch: List[Optional[Tensor]]) -> Tensor:
        n, c = sample_mean.shape
        point_y = torch.native_batch_norm(points, bn_weight, bn_bias, center, var, False, 0.0,
                                          eps)[0]
        point_z, group_mean, group_inv_std = torch.native_group_norm(point_y, weight, bias, n,
                                                                     c, 2, num_groups, eps)
        shift, spread = _half_sums(point_z, half_basis)                      # B, A σ
        sample_var = inv_std.pow(-2) if _flat_kernels(x) else None          # σ²
        ctx.num_groups, ctx.eps, ctx.grad_mode = num_groups, eps, grad_mode
        ctx.save_for_backward(x, sample_mean, inv_std, sample_var, points, point_y, center, var,
                              bn_weight, weight, group_mean, group_inv_std, count, half_basis)
        return _affine_pass(x, sample_mean, inv_std, sample_var, spread, shift, scratch.pop())

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x, sample_mean, inv_std, sample_var, points, point_y, center, var, bn_weight, weight,
         group_mean, group_inv_std, count, half_basis) = ctx.saved_tensors
        n, c, m = _group_norm_shape(x)
        num_groups, eps = ctx.num_groups, ctx.eps
        total, centred = _reduction_pass(grad_out, x, sample_mean, inv_std)   # S0, r S1
        point_grad = torch.stack([total, centred], -1) @ half_basis           # (S0 ± r S1) / 2
        grad_point_y, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            point_grad, point_y, group_mean, group_inv_std, weight, n, c, 2, num_groups,
            [True, True, True])
        bn_inv_std = torch.rsqrt(var + eps)                                   # ρ
        if ctx.grad_mode == 'batch':
            grad_points, grad_bn_weight, grad_bn_bias = (
                torch.ops.aten.native_batch_norm_backward(grad_point_y, points, bn_weight, None,
                                                          None, center, bn_inv_std, True, eps,
                                                          [True, True, True]))
        else:
            grad_points, grad_bn_weight, grad_bn_bias = (
                torch.ops.aten.native_batch_norm_backward(grad_point_y, points, bn_weight, center,
                                                          var, None, None, False, eps,
                                                          [True, True, True]))
            if ctx.grad_mode == 'sync':
                sum_grad, sum_grad_normalized = _all_reduce_sums(grad_bn_bias, grad_bn_weight)
                # The points stand for M / 2 values each.
                grad_points = _sync_input_grad(grad_points, points, center, var, bn_weight,
                                               sum_grad, sum_grad_normalized, count * (2 / m),
                                               eps)
        groups = (num_groups, c // num_groups)
        out_scale = ((bn_weight * bn_inv_std).view(groups) *                   # A = a γ s
                     (weight.view(groups) * group_inv_std.view(n, num_groups, 1))).view(n, c)
        residual = torch.addcmul(grad_points, out_scale.unsqueeze(-1), point_grad, value=-1)
        shift, spread = _half_sums(residual, half_basis * (2 / m))             # R, Q σ
        grad_x = _affine_pass(x, sample_mean, inv_std, sample_var, spread, shift)
        grad_x.addcmul_(grad_out, _channel_view(out_scale, x).to(grad_out.dtype))
        return (grad_x, None, None, None, None, None, grad_bn_weight, grad_bn_bias, grad_weight,
                grad_bias, None, None, None, None, None, None)


def two_pass_batch_channel_norm(x: Tensor,
                                sample_mean: Tensor,
                                inv_std: Tensor,
                                points: Tensor,
                                center: Tensor,
                                var: Tensor,
                                bn_weight: Tensor,
                                bn_bias: Tensor,
                                weight: Tensor,
                                bias: Tensor,
                                num_groups: int,
                                eps: float,
                                grad_mode: str = 'estimates',
                                count: Optional[Tensor] = None,
                                basis: Optional[Tensor] = None,
                                scratch: Optional[Tensor] = None) -> Tensor:
    """BCN at GroupNorm's memory traffic: ``z = A (x - μ) + B`` per (sample, channel).

    The path for large maps: the passes over the activations are those of ``nn.GroupNorm``
    (one statistics pass, :func:`sample_moments`, then one output pass forward; one reduction
    pass and the input-gradient pass backward), the normalization kernels run on
    :func:`moment_points` (``(N, C, 2)``). Saves ``x`` and ``(N, C)``-sized tensors.

    Args:
        x: Input, shape ``(N, C, *S)`` with ``N > 0``.
        sample_mean, inv_std: ``(N, C)``, :func:`sample_moments` of ``x``.
        points: ``(N, C, 2)``, :func:`moment_points` of them, about ``μ̄``.
        center, var: The batch part's per-channel mean, about ``μ̄`` (``mean - μ̄``), and
            biased variance, ``(C,)``; in ``'batch'`` mode the moments of ``points``.
        bn_weight, bn_bias, weight, bias, num_groups, eps, grad_mode, count: As
            :func:`batch_channel_norm`.
        basis: :func:`point_basis` (built here when ``None``).
        scratch: :func:`sample_moments`' scratch tensor, overwritten with ``z`` (``None``: a
            new tensor).

    Returns:
        ``z``, same shape, dtype and memory format as ``x``.
    """
    if basis is None:
        basis = point_basis(dtype=points.dtype, device=points.device)
    return _TwoPassBatchChannelNorm.apply(x, sample_mean, inv_std, points, center, var,
                                          bn_weight, bn_bias, weight, bias, num_groups, eps,
                                          grad_mode, count, basis.to(points.dtype),
                                          # In a list: autograd would take a tensor argument
                                          # returned as the output for a view of an input.
                                          [scratch])


def batch_channel_norm_reference(x: Tensor, mean: Tensor, var: Tensor, bn_weight: Tensor,
                                 bn_bias: Tensor, weight: Tensor, bias: Tensor,
                                 num_groups: int, eps: float) -> Tensor:
    """BCN with given statistics as the plain composition ``group_norm(batch_norm(x))``.

    The eval-mode forward (it traces and exports to ONNX) and the benchmarks' baseline.

    Args:
        x: Input, shape ``(N, C, *S)``.
        mean, var: Per-channel statistics the batch part uses, ``(C,)``.
        bn_weight, bn_bias: Batch-part affine, ``(C,)``.
        weight, bias: Channel-part affine, ``(C,)``.
        num_groups: ``G``.
        eps: Epsilon of both parts.

    Returns:
        ``z``, same shape as ``x``.
    """
    y = torch.nn.functional.batch_norm(x, mean, var, bn_weight, bn_bias, training=False,
                                       momentum=0.0, eps=eps)
    return torch.nn.functional.group_norm(y, num_groups, weight, bias, eps)
