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

Performance notes. On a GPU a small layer costs one launch per operator, so every function here
is written in few operators and without host synchronization (no ``.item()``, no branching on a
tensor's value): rates, counts and masks stay on the device. BCN runs on the two native kernels
that already do the per-channel and per-group work, ``native_batch_norm`` and
``native_group_norm``, forward and backward.
"""
import math
from typing import Optional, Tuple

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

    ``batch_norm_update_stats`` is the batch-norm statistics kernel on its own (no output
    written, no running statistics to update): as accurate as ``var_mean`` and several times
    faster on the CPU, where ``var_mean`` over non-innermost dims is a slow generic reduction.
    The statistics carry no gradient (BCN's backward differentiates through them itself).

    Args:
        x: Input, shape ``(N, C, *S)`` with ``N * prod(S) > 0``.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.
    """
    return torch.batch_norm_update_stats(x.detach(), None, None, 0.0)


def estimate_rate(updates: Tensor, rate_config: Tensor) -> Tensor:
    """The update rate of a step, on the device: ``r_t = max(r, w / (t + 1))``.

    Args:
        updates: ``t + 1``, the number of updates including this one (long scalar, > 0).
        rate_config: ``[r, w]``: the rate and the warm-up weight (1 for the averaging warm-up,
            0 without; with ``w = 1`` the first ``1/r`` estimates are the plain average of all
            batches so far).

    Returns:
        ``r_t``, a scalar tensor of ``rate_config``'s dtype.
    """
    return torch.maximum(rate_config[0], rate_config[1] / updates)


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


def estimate_update(estimate: Tensor, batch_value: Tensor, rate: Tensor) -> None:
    """Move an estimate toward a batch statistic in place: ``μ̂ ← (1 - r) μ̂ + r μ_batch``.

    Args:
        estimate: Running estimate buffer, updated in place.
        batch_value: This step's statistic, same shape.
        rate: Update rate ``r`` in ``[0, 1]`` (a scalar tensor or a float).
    """
    estimate.lerp_(batch_value.to(estimate.dtype), rate)


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


class _BatchChannelNorm(torch.autograd.Function):
    """``z = GN(BN(x))`` on the native kernels, saving only ``x`` (as ``nn.GroupNorm`` does).

    Forward: ``y = native_batch_norm(x)`` with the given per-channel ``(mean, var)`` (an
    element-wise pass), ``z = native_group_norm(y)``; ``y`` is freed. Backward recomputes ``y``
    from ``x``, then ``dy = native_group_norm_backward(dz)`` and
    ``dx = native_batch_norm_backward(dy)``:

    - ``grad_mode='estimates'``: ``(mean, var)`` are constants (estimates):
      ``dx = a dy``, ``a = γ_bn / sqrt(var + eps)``;
    - ``'batch'``: they are this batch's statistics and the gradient flows through them,
      ``dx = a (dy - mean(dy) - x̂ mean(dy x̂))`` with ``x̂ = (x - mean) / sqrt(var + eps)``
      and the means over ``N × M``;
    - ``'sync'``: the same with the means over all processes' elements (``count`` of them):
      one all-reduce of the per-channel ``[Σ dy, Σ dy x̂]`` (as ``nn.SyncBatchNorm``).

    The parameter gradients are ``dγ_bn = Σ dy x̂``, ``dβ_bn = Σ dy`` and GN's own.
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
        ctx.save_for_backward(x, mean, var, bn_weight, bn_bias, weight, group_mean, group_rstd,
                              count)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if grad_out.numel() == 0:
            return _BatchChannelNorm._empty_backward(ctx, grad_out)
        x, mean, var, bn_weight, bn_bias, weight, group_mean, group_rstd, count = \
            ctx.saved_tensors
        n, c, m = _group_norm_shape(x)
        eps, grad_mode = ctx.eps, ctx.grad_mode
        y = torch.native_batch_norm(x, bn_weight, bn_bias, mean, var, False, 0.0, eps)[0]
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
                grad_x = _sync_input_grad(grad_x, x, mean, var, bn_weight, grad_bn_weight,
                                          grad_bn_bias, count, eps)
        return (grad_x, None, None, grad_bn_weight, grad_bn_bias, grad_weight, grad_bias, None,
                None, None, None)

    @staticmethod
    def _empty_backward(ctx, grad_out: Tensor):
        """No samples here; in sync mode this process still joins its peers' all-reduce."""
        x, mean, var, bn_weight, count = ctx.saved_tensors
        if ctx.grad_mode == 'sync':
            zeros = mean.new_zeros(mean.shape)
            _sync_input_grad(grad_out, x, mean, var, bn_weight, zeros, zeros, count, ctx.eps)
        return (grad_out.clone(), ) + (None, ) * 10


def _sync_input_grad(grad_x_local: Tensor, x: Tensor, mean: Tensor, var: Tensor,
                     bn_weight: Tensor, grad_bn_weight: Tensor, grad_bn_bias: Tensor,
                     count: Tensor, eps: float) -> Tensor:
    """``dx = a dy - a / count (Σ_all dy + x̂ Σ_all dy x̂)`` from ``a dy`` and local sums.

    One all-reduce of ``[Σ dy, Σ dy x̂]`` over all processes; ``x̂ = (x - mean) ρ`` with
    ``ρ = 1 / sqrt(var + eps)``, so the correction is ``x k1 + k0`` per channel.
    """
    sums = torch.cat([grad_bn_bias, grad_bn_weight]).to(torch.float64)
    dist.all_reduce(sums)
    sum_grad, sum_grad_normalized = sums.to(mean.dtype).chunk(2)
    inv_std = torch.rsqrt(var + eps)
    scale = bn_weight * inv_std / count.to(mean.dtype).clamp_min(1)
    x_coef = -scale * inv_std * sum_grad_normalized
    const = -scale * sum_grad - x_coef * mean
    if x.numel() == 0:
        return grad_x_local
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
    """BCN with given batch-part statistics: ``z = GN(BN(x; mean, var))``.

    See the module docstring for the equations. Two native kernels forward and three
    backward (one recomputes ``BN(x)``), saving only ``x`` for the backward.

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


def batch_channel_norm_reference(x: Tensor, mean: Optional[Tensor], var: Optional[Tensor],
                                 bn_weight: Tensor, bn_bias: Tensor, weight: Tensor,
                                 bias: Tensor, num_groups: int, eps: float) -> Tensor:
    """BCN as the plain composition ``group_norm(batch_norm(x))`` of library functions.

    The eval-mode forward (it traces and exports to ONNX) and the benchmarks' baseline.

    Args:
        x: Input, shape ``(N, C, *S)``.
        mean: Per-channel mean the batch part uses, ``(C,)``; ``None`` with ``var`` for the
            batch's own statistics (gradient flows through them).
        var: Per-channel variance, ``(C,)`` or ``None``.
        bn_weight, bn_bias: Batch-part affine, ``(C,)``.
        weight, bias: Channel-part affine, ``(C,)``.
        num_groups: ``G``.
        eps: Epsilon of both parts.

    Returns:
        ``z``, same shape as ``x``.
    """
    use_batch_stats = mean is None
    y = torch.nn.functional.batch_norm(x, mean, var, bn_weight, bn_bias,
                                       training=use_batch_stats, momentum=0.0, eps=eps)
    return torch.nn.functional.group_norm(y, num_groups, weight, bias, eps)
