"""Independent references of WS and BCN written from the equations of the paper (arXiv 1903.10520) and the authors' code.

Deliberately naive (explicit per-filter / per-group loops, textbook formulas) and sharing no
code with :mod:`mmws`.
"""
import torch


def reference_standardize(weight, eps=1e-5, unbiased=True, eps_inside_sqrt=False):
    """Ŵ_o = (W_o - μ_o) / σ_o, one filter at a time."""
    out = torch.empty_like(weight)
    for o in range(weight.shape[0]):
        filt = weight[o]
        n = filt.numel()
        mu = filt.sum() / n
        sq = ((filt - mu)**2).sum()
        var = sq / (n - 1) if unbiased else sq / n
        sigma = torch.sqrt(var + eps) if eps_inside_sqrt else torch.sqrt(var) + eps
        out[o] = (filt - mu) / sigma
    return out


def _channel_view(t, x):
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def reference_group_norm(y, num_groups, weight, bias, eps):
    """Per sample, per group of C/G channels: zero mean, unit biased variance, then affine."""
    out = torch.empty_like(y)
    n, c = y.shape[:2]
    k = c // num_groups
    for i in range(n):
        for g in range(num_groups):
            block = y[i, g * k:(g + 1) * k]
            m = block.mean()
            v = ((block - m)**2).mean()
            out[i, g * k:(g + 1) * k] = (block - m) / torch.sqrt(v + eps)
    return out * _channel_view(weight, y) + _channel_view(bias, y)


def reference_batch_stats(x):
    """Per-channel mean and biased variance over N and all spatial positions."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims)
    var = ((x - _channel_view(mean, x))**2).mean(dim=dims)
    return mean, var


def reference_bcn(x, mean, var, bn_weight, bn_bias, weight, bias, num_groups, eps=1e-5):
    """BCN(x) = CN(BN(x)) with the given per-channel statistics for the batch part."""
    y = (x - _channel_view(mean, x)) / torch.sqrt(_channel_view(var, x) + eps)
    y = y * _channel_view(bn_weight, x) + _channel_view(bn_bias, x)
    return reference_group_norm(y, num_groups, weight, bias, eps)


def channel_elements(x):
    """All values of each channel of ``x`` (N, C, *S), as rows of a ``(C, N * M)`` matrix."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


class ReferenceEstimates:
    """The estimate recursions, with the averaging warm-up ``r_t = max(r, 1 / (t + 1))``.

    ``form='est_bn'`` (micro mode; the authors' EstBN): ``μ̂ ← (1 - r) μ̂ + r mean(x)``,
    ``σ̂² ← (1 - r) σ̂² + r mean((x - μ̂_old)²)``, the first update about the batch mean.
    ``form='unbiased'`` (batch mode, as ``nn.BatchNorm2d``): ``σ̂²`` follows the unbiased
    batch variance.
    """

    def __init__(self, channels, momentum, warmup=True, form='est_bn', dtype=torch.float64):
        self.mean = torch.zeros(channels, dtype=dtype)
        self.var = torch.ones(channels, dtype=dtype)
        self.steps = 0
        self.momentum = momentum
        self.warmup = warmup
        self.form = form

    def update(self, elements):
        """One step from the ``(C, K)`` values of each channel in the batch."""
        elements = elements.to(self.mean.dtype)
        rate = max(self.momentum, 1 / (self.steps + 1)) if self.warmup else self.momentum
        batch_mean = elements.mean(1)
        if self.form == 'unbiased':
            batch_var = ((elements - batch_mean[:, None])**2).sum(1) / (elements.shape[1] - 1)
        else:
            center = self.mean if self.steps else batch_mean
            batch_var = ((elements - center[:, None])**2).mean(1)
        self.mean = (1 - rate) * self.mean + rate * batch_mean
        self.var = (1 - rate) * self.var + rate * batch_var
        self.steps += 1
