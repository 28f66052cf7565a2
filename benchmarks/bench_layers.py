"""Layer benchmark: ``mmws.BCN`` and ``mmws.ConvWS`` against their peers, in one process.

Normalizations, forward + backward in training (gradients of the input and all parameters)
over a matrix of shapes ``N × C × S × S`` (N = 1, 2; C 64…2048; S 7…200; 32 groups):

- ``GroupNorm``, ``BatchNorm2d``: the single-operation baselines;
- ``BN→GN``: ``nn.BatchNorm2d`` then ``nn.GroupNorm`` as two modules, the straightforward
  composition that BCN's batch and sync modes replace;
- ``authors BCN``: the authors' formulation (BN; a batch norm over the input reshaped to
  ``(1, N·G, C/G·S·S)`` for the group statistics; a per-group affine by broadcasting);
- ``BN(estimates)→GN``: the straightforward composition that micro-batch BCN replaces (update
  the estimates from the batch's per-channel statistics, ``F.batch_norm`` with the updated
  estimates, ``F.group_norm``: :func:`mmws.models.functional.batch_channel_norm_reference`);
- ``BCN micro``, ``BCN batch``, ``BCN sync``: ``mmws.BCN`` in each mode (one process: sync
  behaves as batch);
- ``two-pass micro``: ``mmws.BCN(training_path='two_pass')``, micro mode, at every shape
  (``BCN micro`` takes it from 2¹⁹ elements up).

Convolutions (ResNet-50's bottleneck convs), training (forward + backward) and ``eval()``
under ``torch.no_grad()``: ``Conv2d``, mmcv's ``ConvWS2d``, a timm-style ``StdConv2d`` (the
weight standardized by one ``F.batch_norm`` over the reshaped weight) and ``mmws.ConvWS``.

Per shape: median times (interleaved measurement), activations saved for backward, the
profiler's peak memory, ratios, and the largest error of ``mmws.BCN`` / ``mmws.ConvWS``
against the straightforward composition (outputs and gradients, relative to the reference's
largest magnitude). Per variant, once: the compute operators and host syncs of one
``layer(x).sum().backward()`` at ``x = 2×64×32×32`` (on a GPU each operator is at least one
kernel launch; ``--device cuda`` also counts the CUDA kernels). Writes
``benchmarks/results/layers.json``.

``--compile``: also ``torch.compile`` (inductor) GroupNorm and BCN (micro, batch), fwd+bwd,
at the target shapes. The machine line prints the load average and glibc's mmap threshold
(``MALLOC_MMAP_THRESHOLD_``): by default glibc maps every tensor of 32 MiB or more afresh, and
the page faults of those fresh mappings inflate the time of whichever layer allocates them
(GroupNorm's output at the large shapes); rerun with ``MALLOC_MMAP_THRESHOLD_=4294967296`` to
see the ratios without that effect.

Run: ``.venv/bin/python benchmarks/bench_layers.py`` (about 5 minutes on 2 cores),
``--quick`` for a seconds-long smoke run on one tiny shape, ``--norm-only`` without the
convolutions, ``--device cuda`` on a GPU (times from CUDA events).
"""
import argparse
import copy
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import (RESULTS_DIR, check_targets, import_bcn_before, machine, max_relative_error,
                    operator_counts, peak_bytes, ratio, revision, saved_bytes, targets_table,
                    time_interleaved, utc_now, write_json)
from mmws import BCN, ConvWS
from mmws.models.functional import batch_channel_norm_reference
from render_performance import conv_table, norm_table, operators_table

GROUPS = 32
# N×C×S×S and the limit of BCN / GroupNorm, eager fwd+bwd: ResNet/FPN levels at detection
# scale, a RoI head's 512 RoIs at 7×7, and small maps where the operator count sets the time.
NORM_TARGETS = {(2, 256, 128, 128): 1.35, (1, 256, 200, 200): 1.35, (2, 256, 96, 96): 1.35,
                (1, 256, 128, 128): 1.35, (1, 1024, 50, 50): 1.5, (512, 256, 7, 7): 2.3,
                (2, 64, 64, 64): 2.3, (2, 256, 7, 7): 3.5}
# compiled BCN / compiled GroupNorm
COMPILED_TARGETS = {(2, 256, 128, 128): 1.2, (1, 256, 200, 200): 1.2, (2, 256, 96, 96): 1.2,
                    (1, 256, 128, 128): 1.2, (512, 256, 7, 7): 1.5}
NORM_SHAPES = list(NORM_TARGETS) + [(1, 2048, 25, 25)]
# N, in, out, kernel, S: ResNet-50 bottleneck convs (3×3 at each stage's resolution for a
# 448-pixel input, and the last stage's 1×1 reduction).
CONV_SHAPES = [(1, 64, 64, 3, 112), (1, 128, 128, 3, 56), (1, 256, 256, 3, 28),
               (1, 512, 512, 3, 7), (1, 2048, 512, 1, 7)]
QUICK_NORM_SHAPES = [(2, 64, 6, 6)]
QUICK_CONV_SHAPES = [(1, 8, 16, 3, 6)]
OPERATOR_SHAPE = (2, 64, 32, 32)  # the operator counts' input (see common.operator_counts)
LARGE_OPERATOR_SHAPE = (2, 64, 64, 64)  # where BCN takes its two-pass path


class AuthorsBCN(nn.Module):
    """The authors' BCN formulation (large-batch), restated from their public code.

    ``nn.BatchNorm2d``; reshape ``(N, C, H, W) → (1, N·G, C/G·H·W)`` and a batch norm without
    affine in training mode (its "channels" are the (sample, group) pairs, so it computes the
    group statistics); reshape to ``(N, G, C/G·H·W)``, per-group affine ``(1, G, 1)`` by
    broadcasting; reshape back.
    """

    def __init__(self, num_features: int, num_groups: int = GROUPS, eps: float = 1e-5):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps)
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_groups, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_groups, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(x)
        n = y.shape[0]
        grouped = F.batch_norm(y.reshape(1, n * self.num_groups, -1), None, None,
                               training=True, eps=self.eps)
        grouped = grouped.view(n, self.num_groups, -1) * self.weight + self.bias
        return grouped.view_as(x)


class ComposedMicroBCN(nn.Module):
    """Micro-batch BCN as the straightforward composition, on the state of a ``BCN``.

    Under ``no_grad``: the estimate update with the BCN's rate, the variance as the second
    moment of ``x`` about the previous mean estimate (EstBN); then
    ``group_norm(batch_norm(x; updated estimates))``.
    """

    def __init__(self, bcn: BCN):
        super().__init__()
        self.bcn = bcn

    def forward(self, x: Tensor) -> Tensor:
        bcn = self.bcn
        with torch.no_grad():
            dims = (0, *range(2, x.dim()))
            shape = (1, -1) + (1, ) * (x.dim() - 2)
            rate = bcn.update_rate()
            second_moment = (x - bcn.running_mean.view(shape)).square().mean(dims)
            bcn.running_mean.lerp_(x.mean(dims), rate)
            bcn.running_var.lerp_(second_moment, rate)
            bcn.num_batches_tracked.add_(1)
        return batch_channel_norm_reference(x, bcn.running_mean, bcn.running_var,
                                            bcn.bn_weight, bcn.bn_bias, bcn.weight, bcn.bias,
                                            bcn.num_groups, bcn.eps)


class StdConv2d(nn.Conv2d):
    """timm-style Weight Standardization: one ``F.batch_norm`` over the weight viewed as
    ``(1, O, n)`` gives the per-filter standardization (biased variance, eps inside the
    root) in one fused kernel with a native backward."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=self.eps).view_as(self.weight)
        return self._conv_forward(x, weight, self.bias)


def randomized_bcn(channels: int, mode: str, generator: torch.Generator) -> BCN:
    """A BCN with non-trivial affines and estimates (past its warm-up: the rate is r)."""
    bcn = BCN(channels, num_groups=GROUPS, mode=mode)
    with torch.no_grad():
        for param in (bcn.weight, bcn.bn_weight):
            param.copy_(1 + 0.3 * torch.randn(channels, generator=generator))
        for param in (bcn.bias, bcn.bn_bias):
            param.copy_(0.3 * torch.randn(channels, generator=generator))
        bcn.running_mean.copy_(0.5 * torch.randn(channels, generator=generator))
        bcn.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
        bcn.num_batches_tracked.fill_(100)
    return bcn


#: With ``--bcn-before``: another revision's BCN class, timed beside this one (micro, batch).
BCN_BEFORE = None


def norm_variants(channels: int, generator: torch.Generator) -> Dict[str, nn.Module]:
    bcns = {mode: randomized_bcn(channels, mode, generator) for mode in ('micro', 'batch',
                                                                         'sync')}
    before = {}
    if BCN_BEFORE is not None:
        for mode in ('micro', 'batch'):
            before[f'BCN {mode} before'] = BCN_BEFORE(channels, num_groups=GROUPS, mode=mode)
            before[f'BCN {mode} before'].load_state_dict(bcns[mode].state_dict(), strict=False)
    return {**before,
        'GroupNorm': nn.GroupNorm(GROUPS, channels),
        'BatchNorm2d': nn.BatchNorm2d(channels),
        'BN→GN': nn.Sequential(nn.BatchNorm2d(channels), nn.GroupNorm(GROUPS, channels)),
        'authors BCN': AuthorsBCN(channels),
        'BN(estimates)→GN': ComposedMicroBCN(copy.deepcopy(bcns['micro'])),
        **{f'BCN {mode}': bcn for mode, bcn in bcns.items()},
        'two-pass micro': two_pass(bcns['micro']),
    }


def two_pass(bcn: BCN) -> BCN:
    """A copy of ``bcn`` that takes the two-pass path at every shape."""
    twin = copy.deepcopy(bcn)
    twin.training_path = 'two_pass'
    return twin


def forward_backward(module: nn.Module, x: Tensor, grad_out: Tensor) -> Callable[[], object]:
    """One training step of the layer: gradients of the input and all parameters (without
    accumulating into ``.grad``, so every variant does exactly its own work)."""
    inputs = [x, *(p for p in module.parameters() if p.requires_grad)]
    return lambda: torch.autograd.grad(module(x), inputs, grad_out)


def gradients(module: nn.Module, x: Tensor, grad_out: Tensor,
              params: Sequence[Tensor]) -> List[Tensor]:
    out = module(x)
    return [out, *torch.autograd.grad(out, [x, *params], grad_out)]


def bcn_errors(shape: Sequence[int], generator: torch.Generator,
               device: str = 'cpu') -> Dict[str, float]:
    """Largest relative error of ``mmws.BCN`` against the straightforward composition, over
    the output, the gradients of the input and the four affines, and (micro) the updated
    estimates; per mode, and for the two-pass path in micro mode (``two-pass micro``)."""
    x = (torch.randn(shape, generator=generator) * 1.5 + 0.7).to(device).requires_grad_()
    grad_out = torch.randn(shape, generator=generator).to(device)
    errors = {}
    for name in ('micro', 'batch', 'sync', 'two-pass micro'):
        mode = name.split()[-1]
        bcn = randomized_bcn(shape[1], mode, generator).train().to(device)
        if name == 'two-pass micro':
            bcn = two_pass(bcn)
        params = [bcn.bn_weight, bcn.bn_bias, bcn.weight, bcn.bias]
        if mode == 'micro':
            reference = ComposedMicroBCN(copy.deepcopy(bcn))
            ref_params = [reference.bcn.bn_weight, reference.bcn.bn_bias,
                          reference.bcn.weight, reference.bcn.bias]
        else:
            reference = nn.Sequential(nn.BatchNorm2d(shape[1]),
                                      nn.GroupNorm(GROUPS, shape[1])).to(device)
            with torch.no_grad():
                for ref_param, param in zip(reference.parameters(), params):
                    ref_param.copy_(param)
            ref_params = list(reference.parameters())
        actual = gradients(bcn, x, grad_out, params)
        expected = gradients(reference, x, grad_out, ref_params)
        if mode == 'micro':
            actual += [bcn.running_mean, bcn.running_var]
            expected += [reference.bcn.running_mean, reference.bcn.running_var]
        errors[name if name.startswith('two') else f'BCN {name}'] = max(
            max_relative_error(a.detach(), e.detach()) for a, e in zip(actual, expected))
    return errors


def authors_error(shape: Sequence[int], generator: torch.Generator,
                  device: str = 'cpu') -> float:
    """Relative error of the authors' formulation against ``mmws.BCN(mode='batch')`` with the
    per-group affine repeated per channel (checks that the peer computes the same layer)."""
    x = (torch.randn(shape, generator=generator) + 0.5).to(device).requires_grad_()
    grad_out = torch.randn(shape, generator=generator).to(device)
    authors = AuthorsBCN(shape[1])
    bcn = BCN(shape[1], num_groups=GROUPS, mode='batch')
    with torch.no_grad():
        authors.weight.copy_(1 + 0.3 * torch.randn(1, GROUPS, 1, generator=generator))
        authors.bias.copy_(0.3 * torch.randn(1, GROUPS, 1, generator=generator))
        bcn.weight.copy_(authors.weight.flatten().repeat_interleave(shape[1] // GROUPS))
        bcn.bias.copy_(authors.bias.flatten().repeat_interleave(shape[1] // GROUPS))
    authors, bcn = authors.to(device), bcn.to(device)
    actual = gradients(authors, x, grad_out, [])
    expected = gradients(bcn, x, grad_out, [])
    return max(max_relative_error(a.detach(), e.detach()) for a, e in zip(actual, expected))


def device_peak_bytes(call: Callable[[], object], device: str) -> int:
    """Peak memory of one ``call()``: the profiler's timeline on the CPU, the allocator's
    peak on a GPU."""
    if device == 'cpu':
        return peak_bytes(call)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def bench_norm(shape: Tuple[int, ...], repeats: int, min_seconds: float,
               device: str) -> Dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    variants = {name: module.train().to(device) for name, module in
                norm_variants(shape[1], generator).items()}
    x = torch.randn(shape, generator=generator).to(device).requires_grad_()
    grad_out = torch.randn(shape, generator=generator).to(device)
    steps = {name: forward_backward(module, x, grad_out) for name, module in variants.items()}
    times = time_interleaved(steps, repeats, warmup=2, min_seconds=min_seconds, device=device)
    results = {
        name: dict(ms=times[name], saved_bytes=saved_bytes(lambda: module(x),
                                                          module.parameters()),
                   peak_bytes=device_peak_bytes(steps[name], device))
        for name, module in variants.items()
    }
    errors = bcn_errors(shape, generator, device)
    return dict(shape=list(shape), input_bytes=x.numel() * x.element_size(), variants=results,
                errors=dict(errors, **{
                    'authors BCN vs BCN batch': authors_error(shape, generator, device)}))


def bench_compiled(shape: Tuple[int, ...], repeats: int, min_seconds: float,
                   device: str) -> Dict[str, object]:
    """Fwd+bwd of ``torch.compile``'d GroupNorm and BCN (micro, batch), one compile per
    layer and shape (``dynamic=False``: the time of a specialized graph)."""
    generator = torch.Generator().manual_seed(0)
    layers = {'GroupNorm': nn.GroupNorm(GROUPS, shape[1]),
              **{f'BCN {mode}': randomized_bcn(shape[1], mode, generator)
                 for mode in ('micro', 'batch')}}
    x = torch.randn(shape, generator=generator).to(device).requires_grad_()
    grad_out = torch.randn(shape, generator=generator).to(device)
    torch._dynamo.reset()
    steps = {name: forward_backward(torch.compile(layer.train().to(device), dynamic=False),
                                    x, grad_out) for name, layer in layers.items()}
    times = time_interleaved(steps, repeats, warmup=2, min_seconds=min_seconds, device=device)
    return dict(shape=list(shape), variants={name: dict(ms=ms) for name, ms in times.items()})


def conv_variants(in_channels: int, out_channels: int, kernel: int,
                  generator: torch.Generator) -> Dict[str, nn.Module]:
    from mmcv.cnn.bricks import ConvWS2d  # here: the normalization rows run without mmcv
    padding = kernel // 2
    base = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(base.weight.shape, generator=generator))
    variants = {'Conv2d': base,
                'mmcv ConvWS2d': ConvWS2d(in_channels, out_channels, kernel, padding=padding,
                                          bias=False),
                'timm StdConv2d': StdConv2d(in_channels, out_channels, kernel, padding=padding,
                                            bias=False),
                'mmws ConvWS': ConvWS(in_channels, out_channels, kernel, padding=padding,
                                      bias=False)}
    for module in variants.values():
        module.weight.data = base.weight.detach().clone()
    return variants


def conv_error(variants: Dict[str, nn.Module], x: Tensor, grad_out: Tensor) -> float:
    """Relative error of ``mmws.ConvWS`` against mmcv's ``ConvWS2d`` (the same formula:
    unbiased std + eps): output, input and weight gradients."""
    actual = gradients(variants['mmws ConvWS'], x, grad_out, [variants['mmws ConvWS'].weight])
    expected = gradients(variants['mmcv ConvWS2d'], x, grad_out,
                         [variants['mmcv ConvWS2d'].weight])
    return max(max_relative_error(a.detach(), e.detach()) for a, e in zip(actual, expected))


def bench_conv(shape: Tuple[int, ...], repeats: int, min_seconds: float,
               device: str) -> Dict[str, object]:
    batch, in_channels, out_channels, kernel, size = shape
    generator = torch.Generator().manual_seed(0)
    variants = {name: module.to(device) for name, module in
                conv_variants(in_channels, out_channels, kernel, generator).items()}
    x = torch.randn(batch, in_channels, size, size, generator=generator).to(device)
    x.requires_grad_()
    grad_out = torch.randn(batch, out_channels, size, size, generator=generator).to(device)
    train_steps = {name: forward_backward(module.train(), x, grad_out)
                   for name, module in variants.items()}
    train_ms = time_interleaved(train_steps, repeats, warmup=2, min_seconds=min_seconds,
                                device=device)
    results = {name: dict(train_ms=train_ms[name], train_saved_bytes=saved_bytes(
        lambda: module(x), module.parameters())) for name, module in variants.items()}
    error = conv_error(variants, x, grad_out)
    eval_steps = {name: inference(module.eval(), x) for name, module in variants.items()}
    eval_ms = time_interleaved(eval_steps, repeats, warmup=2, min_seconds=min_seconds,
                               device=device)
    for name, result in results.items():
        result['eval_ms'] = eval_ms[name]
    return dict(shape=dict(batch=batch, in_channels=in_channels, out_channels=out_channels,
                           kernel=kernel, size=size), variants=results,
                errors={'mmws ConvWS vs mmcv ConvWS2d': error})


def inference(module: nn.Module, x: Tensor) -> Callable[[], object]:
    def call():
        with torch.no_grad():
            return module(x)
    return call


def operators(device: str, norm_only: bool = False) -> Dict[str, Dict[str, object]]:
    """Compute operators and host syncs (and CUDA kernels) of every variant, at
    :data:`OPERATOR_SHAPE` (BCN also at :data:`LARGE_OPERATOR_SHAPE`):
    ``layer(x).sum().backward()`` in training, the forward under ``no_grad`` in ``eval()`` for
    the convolutions."""
    generator = torch.Generator().manual_seed(0)
    channels = OPERATOR_SHAPE[1]
    x = torch.randn(OPERATOR_SHAPE, generator=generator).to(device).requires_grad_()
    rows = {}
    for name, module in norm_variants(channels, generator).items():
        module = module.train().to(device)
        rows[name] = operator_counts(lambda: module(x).sum().backward(), device)
    large = torch.randn(LARGE_OPERATOR_SHAPE, generator=generator).to(device).requires_grad_()
    for mode in ('micro', 'batch', 'sync'):  # the two-pass path, where BCN takes it
        module = randomized_bcn(channels, mode, generator).train().to(device)
        rows[f'BCN {mode}, ' + '×'.join(map(str, LARGE_OPERATOR_SHAPE))] = operator_counts(
            lambda: module(large).sum().backward(), device)
    if norm_only:
        return rows
    for name, module in conv_variants(channels, channels, 3, generator).items():
        module = module.to(device)
        rows[name] = operator_counts(lambda: module.train()(x).sum().backward(), device)
        rows[f'{name} eval'] = operator_counts(inference(module.eval(), x), device)
    return rows


def layer_targets(norm_rows: List[Dict], conv_rows: List[Dict], operator_rows: Dict[str, Dict],
                  compiled_rows: List[Dict]) -> List[Dict[str, object]]:
    """The issues' layer targets, evaluated on the measured rows (``value <= limit``)."""
    targets = []
    for row in norm_rows:
        shape = tuple(row['shape'])
        if shape in NORM_TARGETS or len(norm_rows) == 1:
            name = '×'.join(map(str, shape))
            for mode in ('micro', 'batch'):
                targets.append(dict(name=f'BCN {mode} / GroupNorm time, {name}',
                                    value=ratio(row, f'BCN {mode}', 'GroupNorm'),
                                    limit=NORM_TARGETS.get(shape, 1.35)))
    for row in compiled_rows:
        name = '×'.join(map(str, row['shape']))
        for mode in ('micro', 'batch'):
            targets.append(dict(name=f'compiled BCN {mode} / compiled GroupNorm time, {name}',
                                value=ratio(row, f'BCN {mode}', 'GroupNorm'),
                                limit=COMPILED_TARGETS.get(tuple(row['shape']), 1.2)))
    large = '×'.join(map(str, LARGE_OPERATOR_SHAPE))
    for mode in ('micro', 'batch', 'sync'):
        for name, limit in ((f'BCN {mode}', 24), (f'BCN {mode}, {large}', 48)):
            counts = operator_rows[name]
            targets.append(dict(name=f'{name} compute operators (fwd+bwd)',
                                value=counts['compute'], limit=limit))
            targets.append(dict(name=f'{name} host syncs', value=counts['host_syncs'], limit=0))
    if conv_rows:
        counts = operator_rows['mmws ConvWS']
        # The budget, 14 with a biased 3x3 conv (nn.Conv2d: 7), is 7 operators above
        # the plain conv's; these convs are bias-free (as in a ResNet), one operator fewer.
        targets.append(dict(name='mmws ConvWS compute operators above Conv2d\'s (training '
                            'fwd+bwd)', value=counts['compute'] -
                            operator_rows['Conv2d']['compute'], limit=7))
        targets.append(dict(name='mmws ConvWS host syncs', value=counts['host_syncs'], limit=0))
        targets.append(dict(name='mmws ConvWS eval operators / Conv2d eval operators',
                            value=operator_rows['mmws ConvWS eval']['compute'] /
                            operator_rows['Conv2d eval']['compute'], limit=1.0))
        targets.append(dict(name='mmws ConvWS vs mmcv ConvWS2d, max relative error',
                            value=max(r['errors']['mmws ConvWS vs mmcv ConvWS2d']
                                      for r in conv_rows), limit=1e-5))
    large_rows = [row for row in norm_rows if row['shape'][-1] >= 25] or norm_rows
    # the two-pass path saves x and (N, C) tensors: GroupNorm's activations
    targets.append(dict(name='BCN two-pass / GroupNorm saved activations, from 25×25 up',
                        value=max(ratio(r, 'two-pass micro', 'GroupNorm', 'saved_bytes')
                                  for r in large_rows), limit=1.01))
    for name in ('BCN micro', 'BCN batch', 'BCN sync', 'two-pass micro'):
        targets.append(dict(name=f'{name} vs composition, max relative error',
                            value=max(r['errors'][name] for r in norm_rows), limit=1e-5))
    return check_targets(targets)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='one tiny shape per layer, one repeat (a smoke test)')
    parser.add_argument('--repeats', type=int, default=7, help='timed calls per variant, '
                        'at least (fast shapes get more: 0.5 s of timed rounds, up to 200)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: 2; 1 with --quick, so that the '
                        'smoke run stays fast on a loaded machine)')
    parser.add_argument('--norm-only', action='store_true', help='only the normalizations')
    parser.add_argument('--norm-shapes', nargs='+', default=None, metavar='NxCxHxW',
                        help='the normalizations\' shapes (default: the targets\' shapes)')
    parser.add_argument('--bcn-before', type=Path, default=None,
                        help='a folder with bcn.py, functional.py and load_checks.py of another '
                        'mmws revision: its BCN (micro, batch) is timed side by side')
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile\'d GroupNorm and BCN at the target shapes')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu',
                        help='cuda: times from CUDA events, CUDA kernels counted')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'layers.json')
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available')
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    if args.quick:
        norm_shapes, conv_shapes, repeats, min_seconds = (QUICK_NORM_SHAPES, QUICK_CONV_SHAPES,
                                                          1, 0.0)
    else:
        norm_shapes, conv_shapes = NORM_SHAPES, CONV_SHAPES
        repeats, min_seconds = args.repeats, 0.5
    if args.norm_shapes:
        norm_shapes = [tuple(int(v) for v in shape.split('x')) for shape in args.norm_shapes]
    if args.norm_only:
        conv_shapes = []
    if args.bcn_before is not None:
        global BCN_BEFORE
        BCN_BEFORE = import_bcn_before(args.bcn_before)
    print('machine:', machine(), flush=True)
    operator_rows = operators(args.device, args.norm_only)
    print('Operators of layer(x).sum().backward(), x = ' + '×'.join(map(str, OPERATOR_SHAPE)) +
          ':\n' + operators_table(operator_rows), flush=True)
    norm_rows, conv_rows = [], []
    for shape in norm_shapes:
        norm_rows.append(bench_norm(shape, repeats, min_seconds, args.device))
        print('norm', shape, {k: round(v['ms'], 2) for k, v in norm_rows[-1]['variants'].items()},
              flush=True)
    for shape in conv_shapes:
        conv_rows.append(bench_conv(shape, repeats, min_seconds, args.device))
        print('conv', shape, flush=True)
    compiled_rows = []
    if args.compile:
        for shape in (norm_shapes if args.quick else COMPILED_TARGETS):
            compiled_rows.append(bench_compiled(shape, repeats, min_seconds, args.device))
            print('compiled', shape, {k: round(v['ms'], 2)
                                      for k, v in compiled_rows[-1]['variants'].items()},
                  flush=True)
    payload = dict(benchmark='layers', taken_at=utc_now(), revision=revision(),
                   machine=machine(), device=args.device, quick=args.quick,
                   repeats=repeats, operators=operator_rows, norm=norm_rows, conv=conv_rows,
                   compiled=compiled_rows,
                   targets=layer_targets(norm_rows, conv_rows, operator_rows, compiled_rows))
    print('\nNormalizations, forward + backward (median ms):\n' + norm_table(norm_rows))
    if conv_rows:
        print('\nConvolutions, training forward + backward (median ms):\n' +
              conv_table(conv_rows, 'train'))
        print('\nConvolutions, eval() under no_grad (median ms):\n' +
              conv_table(conv_rows, 'eval'))
    print('\nTargets:\n' + targets_table(payload['targets']))
    write_json(args.out, payload)
    print(f'\nwrote {args.out}')
    return payload


if __name__ == '__main__':
    main(sys.argv[1:])
