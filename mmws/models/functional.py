"""The maths of Weight Standardization and Batch-Channel Normalization as pure tensor functions.

Qiao et al., *Micro-Batch Training with Batch-Channel Normalization and Weight Standardization*
(arXiv 1903.10520). The modules in :mod:`mmws.models` hold state and registration and call these
functions; the fusion tool and the tests share the same definitions.

Notation: ``x`` has shape ``(N, C, *S)`` with ``M = prod(S)`` spatial positions, ``G`` groups of
``K = C / G`` channels. BCN is ``CN(BN(x))``::

    BN:  y[n,c]   = a[c] * x[n,c] + b[c],   a = γ_bn / sqrt(var + eps),  b = β_bn - a * mean
    CN:  z[n,c]   = γ[c] * (y[n,c] - m[n,g]) / sqrt(v[n,g] + eps) + β[c]

where (mean, var) are the per-channel statistics the batch part normalizes with (estimates, or
the batch's own) and (m, v) the per-sample, per-group biased statistics of ``y``.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

Moments = Tuple[Tensor, Tensor]


class _StandardizeWeight(torch.autograd.Function):
    """``Ŵ = (W - μ) k`` per row of ``W`` (shape ``(O, n)``), ``k = 1 / σ``, with a closed-form
    backward like batch norm's. With ``g = dL/dŴ`` and ``m = n - 1`` (unbiased) or ``n``::

        dW = k (g - mean(g)) - c Ŵ Σ(g Ŵ),   c = 1 / (m s)  (σ = s + eps, s = sqrt(var))
                                             c = k / m      (σ = sqrt(var + eps))

    It saves only ``Ŵ`` (which the convolution saves anyway) and two ``(O, 1)`` vectors,
    instead of autograd's chain of element-wise intermediates.
    """

    @staticmethod
    def forward(ctx, flat: Tensor, eps: float, unbiased: bool, eps_inside_sqrt: bool) -> Tensor:
        out, inv_std, coef = _standardize_rows(flat, eps, unbiased, eps_inside_sqrt)
        ctx.save_for_backward(out, inv_std, coef)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        out, inv_std, coef = ctx.saved_tensors
        grad_dot = (grad_out * out).sum(1, keepdim=True, dtype=torch.float64).to(out.dtype)
        grad = (grad_out - grad_out.mean(1, keepdim=True)).mul_(inv_std)
        return grad.addcmul_(out, grad_dot * coef, value=-1), None, None, None


def _standardize_rows(flat: Tensor, eps: float, unbiased: bool,
                      eps_inside_sqrt: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``(Ŵ, k, c)`` of :class:`_StandardizeWeight` for ``flat`` of shape ``(O, n)``."""
    n = flat.shape[1]
    dof = n - int(unbiased)
    # Shifting by each row's first entry makes a constant filter exactly zero (its float mean
    # need not equal its entries); the sums accumulate in float64, as accurate as a Welford
    # var_mean and several times faster.
    centered = flat - flat[:, :1]
    centered -= (centered.sum(1, keepdim=True, dtype=torch.float64) / n).to(flat.dtype)
    var = centered.square().sum(1, keepdim=True, dtype=torch.float64) / dof
    if eps_inside_sqrt:
        inv_std = torch.rsqrt(var + eps)
        coef = inv_std / dof
    else:
        # clamp_min keeps the gradient finite for constant filters (var == 0); the value
        # changes only below the smallest normal number of the weight's dtype.
        std = var.clamp_min(torch.finfo(flat.dtype).tiny).sqrt()
        inv_std = 1.0 / (std + eps)
        coef = 1.0 / (dof * std)
    inv_std = inv_std.to(flat.dtype)
    return centered.mul_(inv_std), inv_std, coef.to(flat.dtype)


def standardize_weight(weight: Tensor,
                       eps: float = 1e-5,
                       unbiased: bool = True,
                       eps_inside_sqrt: bool = False) -> Tensor:
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

    The statistics are computed in float32 (or float64) whatever the weight's dtype; the
    gradient flows through them with a closed-form backward (:class:`_StandardizeWeight`). A
    constant filter standardizes to zeros, with finite gradients.

    Args:
        weight: Conv weight, shape ``(O, I/groups, *kernel)``.
        eps: Added to the std (or the variance, see ``eps_inside_sqrt``).
        unbiased: Whether the variance divides by ``n - 1`` instead of ``n``.
        eps_inside_sqrt: Whether ``eps`` is added inside the square root.

    Returns:
        The standardized weight, same shape, in the statistics' dtype (float32 or float64).
    """
    stats_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    flat = weight.to(stats_dtype).flatten(1)
    # Under autocast, bmm would run in fp16/bf16: keep the statistics in stats_dtype.
    with torch.autocast(flat.device.type, enabled=False):
        if torch.is_grad_enabled() and flat.requires_grad:
            out = _StandardizeWeight.apply(flat, eps, unbiased, eps_inside_sqrt)
        else:
            out = _standardize_rows(flat, eps, unbiased, eps_inside_sqrt)[0]
    return out.view_as(weight)


def spatial_moments(x: Tensor) -> Moments:
    """Per-sample, per-channel biased mean and variance over the spatial dims.

    Args:
        x: Input, shape ``(N, C, *S)``.

    Returns:
        ``(mean, var)``, each of shape ``(N, C)`` in float32 (float64 for float64 input).
    """
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.dim() == 2:
        return x.to(stats_dtype, copy=True), x.new_zeros(x.shape, dtype=stats_dtype)
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0)
    return mean.to(stats_dtype), var.to(stats_dtype)


def channel_moments(sample_mean: Tensor, sample_var: Tensor) -> Moments:
    """Per-channel biased mean and variance over the batch, from per-sample moments.

    All samples have the same number of spatial positions, so by the law of total variance::

        mean[c] = mean_n sample_mean[n,c]
        var[c]  = mean_n (sample_var[n,c] + (sample_mean[n,c] - mean[c])²)

    Args:
        sample_mean: Shape ``(N, C)``.
        sample_var: Shape ``(N, C)``.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.
    """
    mean = sample_mean.mean(0)
    var = (sample_var + (sample_mean - mean).square()).mean(0)
    return mean, var


def estimate_update(estimate: Tensor, batch_value: Tensor, rate: float) -> None:
    """Move an estimate toward a batch statistic in place: ``μ̂ ← (1 - r) μ̂ + r μ_batch``.

    Args:
        estimate: Running estimate buffer, updated in place.
        batch_value: This step's statistic, same shape.
        rate: Update rate ``r`` in ``[0, 1]``.
    """
    estimate.lerp_(batch_value.to(estimate.dtype), rate)


def batch_affine(mean: Tensor, var: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                 eps: float) -> Tuple[Tensor, Tensor]:
    """The batch part of BCN as a per-channel affine ``y = a x + b``.

    ``a = γ_bn / sqrt(var + eps)``, ``b = β_bn - a * mean``; all shapes ``(C,)``.
    """
    scale = bn_weight * torch.rsqrt(var + eps)
    return scale, bn_bias - scale * mean


def group_scale_shift(sample_mean: Tensor, sample_var: Tensor, scale: Tensor, shift: Tensor,
                      weight: Tensor, bias: Tensor, num_groups: int,
                      eps: float) -> Tuple[Tensor, Tensor]:
    """Fold BCN into one per-(sample, channel) affine ``z = S x + T`` of the input.

    From the per-sample moments of ``x`` and the batch affine ``(a, b)``, the moments of
    ``y = a x + b`` are ``(a * sample_mean + b, a² * sample_var)``; the group statistics of ``y``
    follow by the law of total variance over the ``K`` channels of each group::

        m[n,g] = mean_{c∈g} ȳ[n,c]
        v[n,g] = mean_{c∈g} (var_y[n,c] + (ȳ[n,c] - m[n,g])²)
        S[n,c] = γ[c] a[c] / sqrt(v[n,g] + eps)
        T[n,c] = γ[c] (b[c] - m[n,g]) / sqrt(v[n,g] + eps) + β[c]

    Args:
        sample_mean: Per-sample channel means of ``x``, shape ``(N, C)``.
        sample_var: Per-sample channel biased variances of ``x``, shape ``(N, C)``.
        scale: ``a``, shape ``(C,)``.
        shift: ``b``, shape ``(C,)``.
        weight: Channel-part affine ``γ``, shape ``(C,)``.
        bias: Channel-part affine ``β``, shape ``(C,)``.
        num_groups: ``G``.
        eps: Channel-part epsilon.

    Returns:
        ``(S, T)``, each of shape ``(N, C)``.
    """
    n, c = sample_mean.shape
    y_mean = (scale * sample_mean + shift).view(n, num_groups, c // num_groups)
    y_var = (scale.square() * sample_var).view(n, num_groups, c // num_groups)
    group_mean = y_mean.mean(2, keepdim=True)
    group_var = (y_var + (y_mean - group_mean).square()).mean(2, keepdim=True)
    group_inv_std = torch.rsqrt(group_var + eps)
    channel_inv_std = group_inv_std.expand(n, num_groups, c // num_groups).reshape(n, c)
    group_mean = group_mean.expand(n, num_groups, c // num_groups).reshape(n, c)
    out_scale = weight * scale * channel_inv_std
    out_shift = weight * (shift - group_mean) * channel_inv_std + bias
    return out_scale, out_shift


ScaleShiftFn = Callable[..., Tuple[Tensor, Tensor]]

# Epsilon of the per-(sample, channel) normalization inside the fast path. It only keeps the
# kernel finite on constant channels: z = S x + T is recovered exactly from x̂ = (x - μ) ρ as
# x̂ (S / ρ) + (S μ + T) whatever its value, and σ² = 1 / ρ² - eps.
_INSTANCE_EPS = 1e-12


def _uses_native_kernels(x: Tensor) -> bool:
    """Whether the group-norm kernels serve the per-(sample, channel) passes of ``x``."""
    return (x.dim() > 2 and x.is_contiguous() and x.dtype in (torch.float32, torch.float64)
            and x[0, 0].numel() > 0)


def _normalized_moments(x: Tensor) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    """Per-sample spatial moments of ``x``, and ``x`` normalized by them when that is free.

    The fast path runs the native group-norm kernel with one group per channel of the view
    ``(1, N*C, M)``: one fused pass gives the moments (numerically stable) and writes the
    normalized ``x̂ = (x - μ) ρ`` into a fresh buffer that the output pass then overwrites in
    place, so BCN allocates one full-size tensor, like ``nn.GroupNorm``.

    Returns:
        ``(x̂ or None, μ, σ²)`` with ``μ, σ²`` of shape ``(N, C)``.
    """
    if not _uses_native_kernels(x):
        return (None, *spatial_moments(x))
    n, c = x.shape[:2]
    normalized, mean, inv_std = torch.native_group_norm(x, None, None, 1, n * c,
                                                        x[0, 0].numel(), n * c, _INSTANCE_EPS)
    var = (inv_std.square().reciprocal() - _INSTANCE_EPS).clamp_min(0)
    return normalized, mean.view(n, c), var.view(n, c)


def _affine_output(x: Tensor, normalized: Optional[Tensor], mean: Tensor, var: Tensor,
                   out_scale: Tensor, out_shift: Tensor) -> Tensor:
    """``z = S x + T``; with ``x̂`` given, computed in its buffer as ``x̂ (S / ρ) + (S μ + T)``."""
    if normalized is None:
        return torch.addcmul(_broadcastable(out_shift, x), x, _broadcastable(out_scale, x))
    scale_of_normalized = out_scale * torch.sqrt(var + _INSTANCE_EPS)
    # One in-place pass: out= may alias an input of an element-wise op.
    return torch.addcmul(_broadcastable(out_scale * mean + out_shift, x), normalized,
                         _broadcastable(scale_of_normalized, x), out=normalized)


def _broadcastable(t: Tensor, x: Tensor) -> Tensor:
    """View an ``(N, C)`` tensor as ``(N, C, 1, ...)`` in ``x``'s dtype."""
    return t.to(x.dtype).view(t.shape + (1, ) * (x.dim() - 2))


def _spatial_sums(grad: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(Σ_s g x, Σ_s g)`` per ``(sample, channel)``, each of shape ``(N, C)``."""
    n, c = x.shape[:2]
    if _uses_native_kernels(x) and grad.is_contiguous():
        # The group-norm backward kernel with mean 0 and rstd 1 computes both sums in one pass.
        ones = x.new_ones(1, n * c)
        _, dot, total = torch.ops.aten.native_group_norm_backward(
            grad, x, torch.zeros_like(ones), ones, ones.view(-1), 1, n * c, x[0, 0].numel(),
            n * c, [False, True, True])
        return dot.view(n, c), total.view(n, c)
    if x.dim() == 2:
        return grad * x, grad
    spatial_dims = tuple(range(2, x.dim()))
    return (grad * x).sum(spatial_dims), grad.sum(spatial_dims)
class _MomentAffine(torch.autograd.Function):
    """``z = S(μ, σ², θ) x + T(μ, σ², θ)`` with ``(μ, σ²)`` the spatial moments of ``x``.

    Full-size work is two passes forward (moments with ``x̂``; output in place) and two
    backward (the sums ``Σ g x`` and ``Σ g``; the input gradient), and only ``x`` is saved. The
    small graph from the ``(N, C)`` moments and parameters ``θ`` to ``(S, T)`` is built with
    autograd during the forward and differentiated by autograd in the backward, so any
    per-channel formula (the estimated, batch or synchronized statistics of BCN) gets an exact
    gradient, and the input gradient needs only the chain rule through the moments::

        dx = g S + dμ / M + 2 dσ² (x - μ) / M
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale_shift_fn: ScaleShiftFn, *params: Tensor) -> Tensor:
        normalized, mean, var = _normalized_moments(x)
        with torch.enable_grad():
            leaves = [mean.requires_grad_(), var.requires_grad_()]
            leaves += [p.detach().requires_grad_(needs) for p, needs in
                       zip(params, ctx.needs_input_grad[2:])]
            out_scale, out_shift = scale_shift_fn(*leaves)
        ctx.save_for_backward(x)
        ctx.small_graph = (leaves, out_scale, out_shift)
        return _affine_output(x, normalized, mean.detach(), var.detach(), out_scale.detach(),
                              out_shift.detach())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, = ctx.saved_tensors
        leaves, out_scale, out_shift = ctx.small_graph
        grad_out = grad_out.contiguous(memory_format=_memory_format(x))
        grad_scale, grad_shift = _spatial_sums(grad_out, x)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        # retain_graph: the outer graph may be differentiated more than once (retain_graph
        # there); the small graph is freed with ctx.
        grads = torch.autograd.grad(
            (out_scale, out_shift), wanted,
            (grad_scale.to(out_scale.dtype), grad_shift.to(out_shift.dtype)),
            retain_graph=True, allow_unused=True)
        grads_by_leaf = dict(zip(map(id, wanted), grads))
        leaf_grads = [grads_by_leaf.get(id(leaf)) for leaf in leaves]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_mean, grad_var = (torch.zeros_like(leaf) if grad is None else grad
                                   for leaf, grad in zip(leaves[:2], leaf_grads[:2]))
            size = x[0, 0].numel()
            x_coef = 2.0 * grad_var / size
            const = grad_mean / size - x_coef * leaves[0].detach()
            grad_x = torch.addcmul(_broadcastable(const, x), grad_out,
                                   _broadcastable(out_scale, x))
            grad_x.addcmul_(x, _broadcastable(x_coef, x))
        return (grad_x, None, *leaf_grads[2:])


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def moment_affine(x: Tensor, scale_shift_fn: ScaleShiftFn, params: Sequence[Tensor]) -> Tensor:
    """Apply ``z = S x + T`` where ``(S, T) = scale_shift_fn(μ, σ², *params)``.

    ``(μ, σ²)`` are the per-sample spatial moments of ``x`` (:func:`spatial_moments`), and
    ``scale_shift_fn`` maps them and ``params`` to ``(S, T)`` of shape ``(N, C)``. Gradients flow
    to ``x`` (also through the moments) and to ``params``. Without autograd (``no_grad``, or
    nothing requiring grad) this runs the same passes without building a graph.

    Args:
        x: Input of shape ``(N, C, *S)``, contiguous or channels-last.
        scale_shift_fn: Differentiable map ``(μ, σ², *params) -> (S, T)``.
        params: Tensors (parameters) the map depends on.

    Returns:
        ``z``, same shape, dtype and memory format as ``x``.
    """
    needs_graph = torch.is_grad_enabled() and (x.requires_grad or
                                               any(p.requires_grad for p in params))
    if needs_graph:
        return _MomentAffine.apply(x, scale_shift_fn, *params)
    normalized, mean, var = _normalized_moments(x)
    out_scale, out_shift = scale_shift_fn(mean, var, *params)
    return _affine_output(x, normalized, mean, var, out_scale, out_shift)


def batch_channel_norm_reference(x: Tensor, mean: Optional[Tensor], var: Optional[Tensor],
                                 bn_weight: Tensor, bn_bias: Tensor, weight: Tensor,
                                 bias: Tensor, num_groups: int, eps: float) -> Tensor:
    """BCN as the plain composition ``group_norm(batch_norm(x))`` of library kernels.

    The fallback where the fused path cannot run (tracing and ONNX export).

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
