"""The GPU check of mmws's layers: one command, one JSON (issue 20, item 5).

Run on a CUDA machine (about 6 minutes at most on an H100: no section starts after
``--budget-s``, 300 s by default, and the compile section stops between its layers)::

    python3 benchmarks/gpu_check.py --out gpu_check.json

and ``--device cpu --quick`` runs the same code on the CPU in seconds (tiny shapes, one or two
timing iterations, the compiler's ``aot_eager_decomp_partition`` backend; what needs CUDA is
recorded as skipped with its reason). The sections, in order, each written to the JSON as it
finishes (a run stopped by a time limit keeps what it did):

1. ``signatures``: the schemas of the operators the layers call, against the ones they were
   written for, and one call of each on the device.
2. ``reference``: BCN (modes micro, batch, sync; paths few_ops, two_pass, and on CUDA
   two_pass_flat: the two-pass path on the batch-norm kernels over the ``(1, N·C, M)`` view
   that the CPU takes, to decide whether CUDA should take them too) over 3 training steps
   and ConvWS (unbiased x eps_inside_sqrt) on the device against a float64 CPU reference written
   here from the equations (outputs, input and parameter gradients, BCN's estimates and step
   counter), in float32 and under float16/bfloat16 autocast, contiguous and channels_last.
3. ``kernels``: device kernels per fwd+bwd (torch.profiler) and host synchronizations (the
   BCN paths as in 2).
4. ``timing``: layer fwd+bwd against GroupNorm / Conv2d, CUDA events, interleaved, medians.
5. ``resnet50``: torchvision's ResNet-50 train step at 1x3x512x512 with GN, GN+WS, BCN+WS.
6. ``compile``: ``torch.compile(fullgraph=True)`` of BCN over 3 shapes against eager.

The layers are loaded WITHOUT the ``mmws`` package: ``mmws/__init__.py`` and
``mmws/registry.py`` import MMEngine, which the GPU machine lacks (and it has no network).
Carrying MMEngine's pure-Python wheel would not be enough: it imports addict, yapf, termcolor,
rich and opencv at import time, each another wheel to carry and keep matched to Python 3.12.
The layer modules need MMEngine only for ``@MODELS.register_module()``, so :func:`load_layers`
puts placeholder ``mmws`` / ``mmws.models`` packages (whose ``__init__`` never runs) and a
``mmws.registry`` whose decorator returns the class unchanged into ``sys.modules``, then imports
``functional``, ``load_checks``, ``bcn`` and ``conv_ws`` from this checkout by file. That is
only done in this script's process.

Tolerances (max |device - reference| / max |reference| per tensor): float32 2e-4 (TF32 turned
off for the reference checks); under autocast the BCN output is float32 and only the input
gradient is rounded to the input's dtype: fp16 2e-3, bf16 1.6e-2; ConvWS's conv runs in the
autocast dtype: fp16 5e-3, bf16 4e-2; compiled against eager, float32: 1e-4.
"""
import argparse
import contextlib
import copy
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import types
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]

TOLERANCES = {
    'bcn': {'float32': 2e-4, 'float16': 2e-3, 'bfloat16': 1.6e-2},
    'conv_ws': {'float32': 2e-4, 'float16': 5e-3, 'bfloat16': 4e-2},
    'compile': 1e-4,
}
#: The schemas the layers were written against (torch 2.11 and 2.13 have these).
EXPECTED_SCHEMAS = {
    'native_group_norm': 'aten::native_group_norm(Tensor input, Tensor? weight, Tensor? bias, '
                         'SymInt N, SymInt C, SymInt HxW, int group, float eps) -> '
                         '(Tensor, Tensor, Tensor)',
    'native_group_norm_backward': 'aten::native_group_norm_backward(Tensor grad_out, Tensor '
                                  'input, Tensor mean, Tensor rstd, Tensor? weight, SymInt N, '
                                  'SymInt C, SymInt HxW, int group, bool[3] output_mask) -> '
                                  '(Tensor, Tensor, Tensor)',
    'native_batch_norm': 'aten::native_batch_norm(Tensor input, Tensor? weight, Tensor? bias, '
                         'Tensor? running_mean, Tensor? running_var, bool training, float '
                         'momentum, float eps) -> (Tensor, Tensor, Tensor)',
    'native_batch_norm_backward': 'aten::native_batch_norm_backward(Tensor grad_out, Tensor '
                                  'input, Tensor? weight, Tensor? running_mean, Tensor? '
                                  'running_var, Tensor? save_mean, Tensor? save_invstd, bool '
                                  'train, float eps, bool[3] output_mask) -> '
                                  '(Tensor, Tensor, Tensor)',
    'batch_norm_update_stats': 'aten::batch_norm_update_stats(Tensor input, Tensor? '
                               'running_mean, Tensor? running_var, float momentum) -> '
                               '(Tensor, Tensor)',
    '_foreach_lerp_.List': 'aten::_foreach_lerp_.List(Tensor(a!)[] self, Tensor[] tensors1, '
                           'Tensor[] weights) -> ()',
    '_foreach_add_.List': 'aten::_foreach_add_.List(Tensor(a!)[] self, Tensor[] other, *, '
                          'Scalar alpha=1) -> ()',
    'var_mean.correction': 'aten::var_mean.correction(Tensor self, int[1]? dim=None, *, '
                           'Scalar? correction=None, bool keepdim=False) -> (Tensor, Tensor)',
}
#: The issue's shapes for the layer timings, ``(N, C, H, W)``.
TIMING_SHAPES = [(2, 256, 128, 128), (1, 256, 200, 200), (2, 256, 96, 96), (1, 256, 128, 128),
                 (1, 1024, 50, 50), (512, 256, 7, 7), (2, 64, 64, 64), (2, 256, 7, 7)]
LAYOUTS = {False: 'contiguous', True: 'channels_last'}
CONV_WS_FORMS = [(unbiased, inside) for unbiased in (True, False) for inside in (False, True)]


class Clock:
    """The run's time budget: sections ask before they start."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def load_layers() -> types.SimpleNamespace:
    """Import ``mmws.models.{functional,load_checks,bcn,conv_ws}`` from this checkout without
    MMEngine (see the module docstring).

    Returns:
        A namespace with ``BCN``, ``ConvWS`` and the module ``functional``.
    """
    # Placeholder packages: their __path__ lets the submodules be found in this checkout, and
    # as they are already in sys.modules, mmws/__init__.py (which imports MMEngine) never runs.
    for name, folder in (('mmws', ROOT / 'mmws'), ('mmws.models', ROOT / 'mmws' / 'models')):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    # The one MMEngine object the layer modules use: the registry's decorator, here a no-op.
    registry = types.ModuleType('mmws.registry')
    registry.MODELS = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    sys.modules['mmws.registry'] = registry
    modules = {name: importlib.import_module(f'mmws.models.{name}')
               for name in ('functional', 'load_checks', 'bcn', 'conv_ws')}
    return types.SimpleNamespace(BCN=modules['bcn'].BCN, ConvWS=modules['conv_ws'].ConvWS,
                                 functional=modules['functional'])


# ----------------------------------------------------------------------------------------
# The float64 CPU references, from the equations (independent of mmws's code).


def reference_bcn_step(x: Tensor, params: Dict[str, Tensor], state: Dict[str, Tensor],
                       mode: str, momentum: float, groups: int, eps: float) -> Tensor:
    """One training step of BCN in float64: updates ``state`` and returns ``z``.

    ``state`` holds ``mean``, ``var`` (the estimates) and ``steps``. With ``r_t = max(r,
    1/(t+1))`` and the batch's per-channel mean ``μ_B`` and biased variance ``σ²_B``:
    micro mode moves ``μ̂ ← μ̂ + r_t (μ_B - μ̂)`` and
    ``σ̂² ← σ̂² + r_t (mean((x - μ̂_old)²) - σ̂²)`` (about ``μ_B`` on the first step) and
    normalizes with the new estimates as constants; batch/sync mode normalizes with
    ``(μ_B, σ²_B)`` (gradient through them) and moves the estimates toward
    ``(μ_B, σ²_B M / (M - 1))``, ``M`` values per channel. Then
    ``y = γ_bn (x - μ) / sqrt(σ² + eps) + β_bn`` and ``z = GN(y)`` with ``groups`` groups.
    """
    dims = [0, *range(2, x.dim())]
    view = (1, -1, *[1] * (x.dim() - 2))
    batch_mean = x.mean(dims)
    batch_var = (x - batch_mean.view(view)).square().mean(dims)
    steps = int(state['steps'])
    rate = max(momentum, 1 / (steps + 1))
    with torch.no_grad():
        if mode == 'micro':
            center = state['mean'] if steps else batch_mean
            target_var = (x - center.view(view)).square().mean(dims)
        else:
            values = x.numel() // x.shape[1]
            target_var = batch_var * values / (values - 1)
        state['mean'] = state['mean'] + rate * (batch_mean - state['mean'])
        state['var'] = state['var'] + rate * (target_var - state['var'])
        state['steps'] = state['steps'] + 1
    mean, var = ((state['mean'], state['var']) if mode == 'micro' else (batch_mean, batch_var))
    y = (x - mean.view(view)) / (var.view(view) + eps).sqrt()
    y = y * params['bn_weight'].view(view) + params['bn_bias'].view(view)
    grouped = y.reshape(x.shape[0], groups, -1)
    group_mean = grouped.mean(-1, keepdim=True)
    group_var = (grouped - group_mean).square().mean(-1, keepdim=True)
    z = ((grouped - group_mean) / (group_var + eps).sqrt()).view_as(x)
    return z * params['weight'].view(view) + params['bias'].view(view)


def reference_standardize(weight: Tensor, eps: float, unbiased: bool, inside: bool) -> Tensor:
    """``(W - μ) / σ`` per output filter, ``σ = std + eps`` or ``sqrt(var + eps)``."""
    flat = weight.flatten(1)
    n = flat.shape[1]
    centred = flat - flat.mean(1, keepdim=True)
    var = centred.square().sum(1, keepdim=True) / (n - 1 if unbiased else n)
    sigma = (var + eps).sqrt() if inside else var.sqrt() + eps
    return (centred / sigma).view_as(weight)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` in float64 on the CPU."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def compare(named: Dict[str, Tuple[Tensor, Tensor]], tolerance: float) -> Dict:
    """Relative errors of ``{name: (actual, expected)}`` and whether all are within
    ``tolerance`` (and finite)."""
    errors = {name: relative_error(a, e) for name, (a, e) in named.items()}
    passed = all(math.isfinite(v) and v <= tolerance for v in errors.values())
    return {'pass': passed, 'tolerance': tolerance, 'errors': errors}


# ----------------------------------------------------------------------------------------
# 1. Operator signatures.


def check_signatures(device: torch.device) -> Dict:
    """The operators' schemas against :data:`EXPECTED_SCHEMAS` and one call of each."""
    schemas = {}
    for key, expected in EXPECTED_SCHEMAS.items():
        name, _, overload = key.partition('.')
        packet = getattr(torch.ops.aten, name, None)
        op = getattr(packet, overload or 'default', None) if packet is not None else None
        found = str(op._schema) if op is not None else None
        schemas[key] = {'pass': found == expected, 'found': found, 'expected': expected}
    calls = {}
    x = torch.randn(2, 4, 3, 3, device=device)
    ones, zeros = torch.ones(4, device=device), torch.zeros(4, device=device)
    attempts = {
        'native_group_norm': lambda: torch.native_group_norm(x, ones, zeros, 2, 4, 9, 2, 1e-5),
        'native_group_norm_backward': lambda: torch.ops.aten.native_group_norm_backward(
            x, x, *torch.native_group_norm(x, None, None, 2, 4, 9, 2, 1e-5)[1:], ones, 2, 4, 9,
            2, [True, True, True]),
        'native_batch_norm': lambda: torch.native_batch_norm(x, ones, zeros, zeros, ones, False,
                                                             0.0, 1e-5),
        'native_batch_norm_backward': lambda: torch.ops.aten.native_batch_norm_backward(
            x, x, ones, zeros, ones, None, None, False, 1e-5, [True, True, True]),
        'batch_norm_update_stats': lambda: torch.batch_norm_update_stats(x, None, None, 0.0),
        '_foreach_lerp_.List': lambda: torch._foreach_lerp_(
            [ones.clone(), zeros.clone()], [zeros, ones], [torch.tensor(0.5, device=device)] * 2),
        '_foreach_add_.List': lambda: torch._foreach_add_(
            [torch.zeros((), dtype=torch.long, device=device)],
            [torch.tensor(True, device=device)]),
        'var_mean.correction': lambda: torch.var_mean(x, [0, 2, 3], correction=0),
    }
    for key, attempt in attempts.items():
        try:
            attempt()
            calls[key] = {'pass': True}
        except Exception as error:  # noqa: BLE001 -- recorded, the run goes on
            calls[key] = {'pass': False, 'error': f'{type(error).__name__}: {error}'[:300]}
    passed = all(v['pass'] for v in schemas.values()) and all(v['pass'] for v in calls.values())
    return {'pass': passed, 'schemas': schemas, 'calls': calls}


# ----------------------------------------------------------------------------------------
# 2. The layers on the device against the float64 CPU reference.


def random_bcn_params(channels: int, gen: torch.Generator) -> Dict[str, Tensor]:
    """Non-trivial affines for both parts (float64, CPU)."""
    def draw(center: float) -> Tensor:
        return center + 0.3 * torch.randn(channels, generator=gen, dtype=torch.float64)
    return {'bn_weight': draw(1.0), 'bn_bias': draw(0.0), 'weight': draw(1.0), 'bias': draw(0.0)}


def bcn_inputs(shape: Sequence[int], steps: int, gen: torch.Generator) -> List[Tensor]:
    """Inputs with channel means and spreads of their own (float64, CPU)."""
    channels = shape[1]
    view = (1, channels, *[1] * (len(shape) - 2))
    offset = 2 * torch.randn(channels, generator=gen, dtype=torch.float64).view(view)
    spread = (0.5 + torch.rand(channels, generator=gen, dtype=torch.float64)).view(view)
    return [offset + spread * torch.randn(*shape, generator=gen, dtype=torch.float64)
            for _ in range(steps)]


@contextlib.contextmanager
def flat_kernels_on(layers, device: torch.device):
    """Within: BCN's two-pass path streams contiguous maps on ``device`` through the batch-norm
    kernels over the ``(1, N·C, M)`` view, as it does on the CPU (``two_pass_flat``)."""
    functional = layers.functional
    saved = functional.FLAT_KERNEL_DEVICES
    functional.FLAT_KERNEL_DEVICES = (*saved, device.type)
    try:
        yield
    finally:
        functional.FLAT_KERNEL_DEVICES = saved


def bcn_paths(layers, device: torch.device) -> List[str]:
    """The training paths checked: both, and the two-pass path on the flat kernels where
    ``device`` does not take them by default."""
    flat = [] if device.type in layers.functional.FLAT_KERNEL_DEVICES else ['two_pass_flat']
    return ['few_ops', 'two_pass', *flat]


def path_context(layers, device: torch.device, path: str):
    """``(training_path, context)`` of a :func:`bcn_paths` entry."""
    if path == 'two_pass_flat':
        return 'two_pass', flat_kernels_on(layers, device)
    return path, contextlib.nullcontext()


def check_bcn(layers, device: torch.device, mode: str, path: str, precision: str,
              channels_last: bool, shape: Sequence[int], groups: int, steps: int = 3) -> Dict:
    """``steps`` training steps of ``BCN`` on ``device`` against :func:`reference_bcn_step`."""
    gen = torch.Generator().manual_seed(0)
    params = random_bcn_params(shape[1], gen)
    inputs = bcn_inputs(shape, steps, gen)
    momentum, eps = 0.1, 1e-5
    layer = layers.BCN(shape[1], num_groups=groups, momentum=momentum, mode=mode,
                       training_path=path).to(device).train()
    with torch.no_grad():
        for name, value in params.items():
            getattr(layer, name).copy_(value)
    state = {'mean': torch.zeros(shape[1], dtype=torch.float64),
             'var': torch.ones(shape[1], dtype=torch.float64), 'steps': 0}
    autocast_dtype = None if precision == 'float32' else getattr(torch, precision)
    result = {'pass': True, 'steps': []}
    for step, x64 in enumerate(inputs):
        if autocast_dtype is not None:  # the input a conv under autocast would hand over
            x64 = x64.to(autocast_dtype).double()
        grad64 = torch.randn(*shape, generator=gen, dtype=torch.float64)
        x = x64.to(device, autocast_dtype or torch.float32)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        layer.zero_grad()
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float16,
                            enabled=autocast_dtype is not None):
            out = layer(x)
        (out.float() * grad64.to(device, torch.float32)).sum().backward()
        ref_x = x64.clone().requires_grad_(True)
        ref_params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        ref_out = reference_bcn_step(ref_x, ref_params, state, mode, momentum, groups, eps)
        (ref_out * grad64).sum().backward()
        named = {'output': (out, ref_out), 'input_grad': (x.grad, ref_x.grad)}
        named.update({f'{k}_grad': (getattr(layer, k).grad, v.grad)
                      for k, v in ref_params.items()})
        checked = compare(named, TOLERANCES['bcn'][precision])
        checked['output_dtype'] = str(out.dtype).replace('torch.', '')
        if channels_last:
            kept = out.is_contiguous(memory_format=torch.channels_last)
            checked['channels_last_kept'] = kept
            checked['pass'] = checked['pass'] and kept
        result['steps'].append(checked)
        result['pass'] = result['pass'] and checked['pass']
    estimates = compare({'running_mean': (layer.running_mean, state['mean']),
                         'running_var': (layer.running_var, state['var'])},
                        TOLERANCES['bcn']['float32'])
    estimates['num_batches_tracked'] = int(layer.num_batches_tracked)
    estimates['pass'] = estimates['pass'] and estimates['num_batches_tracked'] == steps
    result['estimates'] = estimates
    result['pass'] = result['pass'] and estimates['pass']
    return result


def check_conv_ws(layers, device: torch.device, unbiased: bool, inside: bool, precision: str,
                  channels_last: bool, shape: Sequence[int], out_channels: int) -> Dict:
    """A 3x3 ``ConvWS`` fwd+bwd on ``device`` against the float64 standardized conv."""
    gen = torch.Generator().manual_seed(1)
    eps = 1e-5
    conv = layers.ConvWS(shape[1], out_channels, 3, padding=1, eps=eps, unbiased=unbiased,
                         eps_inside_sqrt=inside)
    with torch.no_grad():
        conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=gen) + 0.02)
        conv.bias.copy_(torch.randn(out_channels, generator=gen))
    weight64, bias64 = conv.weight.detach().double(), conv.bias.detach().double()
    conv = conv.to(device).train()
    x64 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    grad64 = torch.randn(shape[0], out_channels, *shape[2:], generator=gen, dtype=torch.float64)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    x = x64.to(device, torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    autocast_dtype = None if precision == 'float32' else getattr(torch, precision)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float16,
                        enabled=autocast_dtype is not None):
        out = conv(x)
    (out.float() * grad64.to(device, torch.float32)).sum().backward()
    ref_x, ref_w, ref_b = (t.clone().requires_grad_(True) for t in (x64, weight64, bias64))
    ref_out = F.conv2d(ref_x, reference_standardize(ref_w, eps, unbiased, inside), ref_b,
                       padding=1)
    (ref_out * grad64).sum().backward()
    return compare({'output': (out, ref_out), 'input_grad': (x.grad, ref_x.grad),
                    'weight_grad': (conv.weight.grad, ref_w.grad),
                    'bias_grad': (conv.bias.grad, ref_b.grad)},
                   TOLERANCES['conv_ws'][precision])


def autocast_precisions(device: torch.device) -> Tuple[List[str], Dict[str, str]]:
    """The precisions to check on ``device`` and the reasons for those left out."""
    precisions, skipped = ['float32'], {}
    for name in ('float16', 'bfloat16'):
        try:
            with torch.autocast(device.type, dtype=getattr(torch, name)):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            precisions.append(name)
        except Exception as error:  # noqa: BLE001 -- recorded as the reason
            skipped[name] = f'autocast({device.type}, {name}) unavailable: {error}'[:300]
    return precisions, skipped


def check_reference(layers, device: torch.device, quick: bool) -> Dict:
    """Every BCN mode/path and ConvWS form, every precision, both memory formats."""
    # TF32 would make the float32 conv a 10-bit-mantissa product: not what is checked here.
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    precisions, skipped = autocast_precisions(device)
    bcn_shape, groups = ((2, 16, 6, 5), 4) if quick else ((2, 64, 20, 18), 8)
    conv_shape, conv_out = ((2, 8, 6, 5), 12) if quick else ((2, 32, 20, 18), 48)
    bcn, conv_ws = {}, {}
    try:
        for mode in ('micro', 'batch', 'sync'):
            for path in bcn_paths(layers, device):
                # 'sync' on one process takes the local statistics (the all-reduce runs only
                # when world_size > 1), so one precision and layout show it runs.
                variants = ([('float32', False)] if mode == 'sync' else
                            [(p, cl) for p in precisions for cl in (False, True)])
                for precision, channels_last in variants:
                    key = f'{mode}/{path}/{precision}/{LAYOUTS[channels_last]}'
                    training_path, context = path_context(layers, device, path)
                    with context:
                        bcn[key] = check_bcn(layers, device, mode, training_path, precision,
                                             channels_last, bcn_shape, groups)
        for unbiased, inside in CONV_WS_FORMS:
            for precision in precisions:
                for channels_last in (False, True):
                    key = (f'unbiased={unbiased}/eps_inside_sqrt={inside}/{precision}/'
                           f'{LAYOUTS[channels_last]}')
                    conv_ws[key] = check_conv_ws(layers, device, unbiased, inside, precision,
                                                 channels_last, conv_shape, conv_out)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    passed = all(v['pass'] for v in (*bcn.values(), *conv_ws.values()))
    return {'pass': passed, 'bcn_shape': bcn_shape, 'bcn_groups': groups,
            'conv_ws_shape': conv_shape, 'conv_ws_out_channels': conv_out,
            'tolerances': {k: v for k, v in TOLERANCES.items() if k != 'compile'},
            'autocast_skipped': skipped,
            'sync_note': "mode='sync' runs without a process group: on one process BCN takes "
                         "the local batch statistics exactly as 'batch' does (its all-reduce "
                         'runs only when world_size > 1), so a 1-process gloo/NCCL group would '
                         "exercise nothing more; the all-reduce is checked by CI's 2-process "
                         'gloo tests on the CPU.',
            'bcn': bcn, 'conv_ws': conv_ws}


# ----------------------------------------------------------------------------------------
# 3. Kernels per fwd+bwd.


def layer_factories(layers, channels: int,
                    device: torch.device) -> Dict[str, Callable[[], nn.Module]]:
    """The normalization layers compared, by name (a BCN on ``two_pass_flat`` carries the
    context :func:`fwd_bwd` runs it in)."""
    def bcn(mode: str, path: str) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            training_path, _ = path_context(layers, device, path)
            layer = layers.BCN(channels, num_groups=32, mode=mode, training_path=training_path)
            layer.gpu_check_context = lambda: path_context(layers, device, path)[1]
            return layer
        return build
    factories = {'GroupNorm': lambda: nn.GroupNorm(32, channels),
                 'BatchNorm2d': lambda: nn.BatchNorm2d(channels)}
    for mode in ('micro', 'batch'):
        for path in bcn_paths(layers, device):
            factories[f'BCN {mode} {path}'] = bcn(mode, path)
    return factories


def conv_factories(layers, channels: int) -> Dict[str, Callable[[], nn.Module]]:
    """The 3x3 convolutions compared, by name (timm's ``StdConv2d`` where timm is there)."""
    factories = {'Conv2d': lambda: nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                 'ConvWS': lambda: layers.ConvWS(channels, channels, 3, padding=1, bias=False)}
    try:
        from timm.layers import StdConv2d
    except ImportError:
        try:  # timm < 0.9
            from timm.models.layers import StdConv2d
        except ImportError:
            return factories
    factories['timm StdConv2d'] = lambda: StdConv2d(channels, channels, 3, padding=1,
                                                   bias=False)
    return factories


def fwd_bwd(module: nn.Module, x: Tensor, grad: Tensor) -> None:
    """One training fwd+bwd of ``module`` (gradients accumulate; nothing is read back)."""
    with getattr(module, 'gpu_check_context', contextlib.nullcontext)():
        module(x).backward(grad)


def count_kernels(module: nn.Module, x: Tensor, grad: Tensor) -> Dict:
    """Device kernels (CUDA) or outermost ATen operators (CPU) of one fwd+bwd, and host
    synchronizations (CUDA's sync debug mode)."""
    from torch.profiler import ProfilerActivity, profile
    fwd_bwd(module, x, grad)  # warm-up: cuDNN/cuBLAS handles, lazy initialization
    cuda = x.device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fwd_bwd(module, x, grad)
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        events = [e for e in prof.events() if e.name.startswith('aten::') and not (
            e.cpu_parent is not None and e.cpu_parent.name.startswith('aten::'))]
    names = Counter(e.name[:100] for e in events)
    result = {'count': len(events), 'unit': 'cuda_kernels' if cuda else 'outermost_aten_ops',
              'names': dict(names.most_common())}
    if cuda:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try:
                fwd_bwd(module, x, grad)
            finally:
                torch.cuda.set_sync_debug_mode('default')
        result['host_syncs'] = sum('synchroniz' in str(w.message) for w in caught)
    return result


def check_kernels(layers, device: torch.device, quick: bool) -> Dict:
    """Kernels per fwd+bwd of the norms and convs at one large map."""
    shape = (2, 32, 8, 8) if quick else (2, 256, 64, 64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=gen).to(device)
    grad = torch.randn(*shape, generator=gen).to(device)
    counts = {}
    factories = {**layer_factories(layers, shape[1], device),
                 **conv_factories(layers, shape[1])}
    for name, factory in factories.items():
        counts[name] = count_kernels(factory().to(device).train(), x, grad)
    result = {'shape': shape, 'counts': counts}
    if device.type != 'cuda':
        result['skipped'] = ('CUDA kernels and host syncs need CUDA: counted the outermost '
                             'ATen operators instead')
    return result


# ----------------------------------------------------------------------------------------
# 4. Timings.


class Timer:
    """Times ``iters`` calls of a function: CUDA events on a GPU, ``perf_counter`` on the
    CPU (milliseconds per call)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def __call__(self, fn: Callable[[], None], iters: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        begin = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - begin) * 1e3 / iters


def interleaved_medians(fns: Dict[str, Callable[[], None]], timer: Timer, rounds: int,
                        iters: int) -> Dict[str, Dict]:
    """Each function timed once per round, in turn; the median and spread over rounds."""
    for fn in fns.values():  # warm-up
        fn()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(timer(fn, iters))
    return {name: {'median_ms': statistics.median(v), 'min_ms': min(v), 'max_ms': max(v)}
            for name, v in samples.items()}


def time_layers(layers, device: torch.device, quick: bool, clock: Clock) -> Dict:
    """Norms against GroupNorm and convs against Conv2d, fwd+bwd in training, float32."""
    shapes = [(2, 64, 8, 8), (2, 32, 6, 6)] if quick else TIMING_SHAPES
    rounds, iters = (2, 1) if quick else (15, 10)
    timer = Timer(device)
    results = {}
    for shape in shapes:
        if clock.left() < 60:
            results[str(shape)] = {'skipped': 'time budget'}
            continue
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(*shape, generator=gen).to(device)
        grad = torch.randn(*shape, generator=gen).to(device)
        entry = {}
        for kind, factories, baseline in (('norm', layer_factories(layers, shape[1], device),
                                           'GroupNorm'),
                                          ('conv', conv_factories(layers, shape[1]), 'Conv2d')):
            modules = {name: f().to(device).train() for name, f in factories.items()}
            fns = {name: (lambda m=m: fwd_bwd(m, x, grad)) for name, m in modules.items()}
            timed = interleaved_medians(fns, timer, rounds, iters)
            base = timed[baseline]['median_ms']
            for value in timed.values():
                value[f'ratio_to_{baseline}'] = value['median_ms'] / base
            entry[kind] = timed
        results[str(shape)] = entry
    return {'unit': 'ms per fwd+bwd, float32, TF32 as torch defaults', 'rounds': rounds,
            'note': '' if timer.cuda else 'CPU perf_counter, 1-2 iterations: a code-path check, '
                                          'not a measurement',
            'iters_per_round': iters, 'timer': 'cuda events' if timer.cuda else 'perf_counter',
            'shapes': results}


# ----------------------------------------------------------------------------------------
# 5. ResNet-50 train step.


def swap_convs(module: nn.Module, conv_cls) -> nn.Module:
    """Replace every ``nn.Conv2d`` under ``module`` by ``conv_cls`` with the same geometry."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, conv_cls(child.in_channels, child.out_channels,
                                           child.kernel_size, child.stride, child.padding,
                                           child.dilation, child.groups, child.bias is not None))
        else:
            swap_convs(child, conv_cls)
    return module


def time_resnet50(layers, device: torch.device, quick: bool, clock: Clock) -> Dict:
    """torchvision's ResNet-50, SGD train step, GN / GN+WS / BCN+WS: time and peak memory."""
    try:
        from torchvision.models import resnet50
    except ImportError as error:
        return {'skipped': f'torchvision is not importable ({error})'}
    if clock.left() < 90:
        return {'skipped': 'time budget'}
    size = 64 if quick else 512
    rounds = 1 if quick else 10
    norms = {'GN': lambda c: nn.GroupNorm(32, c),
             'BCN': lambda c: layers.BCN(c, num_groups=32, mode='micro')}
    variants = {'GN': ('GN', False), 'GN+WS': ('GN', True), 'BCN+WS': ('BCN', True)}
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, size, size, generator=gen).to(device)
    target = torch.randint(0, 1000, (1, ), generator=gen).to(device)
    steps = {}
    for name, (norm, ws) in variants.items():
        torch.manual_seed(0)
        model = resnet50(weights=None, norm_layer=norms[norm])
        if ws:
            swap_convs(model, layers.ConvWS)
        model = model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()
            optimizer.step()
        steps[name] = step
    timer = Timer(device)
    timed = interleaved_medians(steps, timer, rounds, 1)
    for value in timed.values():
        value['ratio_to_GN'] = value['median_ms'] / timed['GN']['median_ms']
    if device.type == 'cuda':
        for name, step in steps.items():
            torch.cuda.synchronize()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            timed[name]['peak_above_resident_mib'] = (torch.cuda.max_memory_allocated()
                                                      - resident) / 2**20
    return {'input': [1, 3, size, size], 'rounds': rounds, 'unit': 'ms per train step, '
            'float32, TF32 as torch defaults, SGD momentum', 'variants': timed}


# ----------------------------------------------------------------------------------------
# 6. torch.compile against eager.


def check_compile(layers, device: torch.device, quick: bool, clock: Clock, backend: str,
                  progress: Callable[[Dict], None]) -> Dict:
    """``torch.compile(fullgraph=True)`` of BCN over 3 shapes per mode and path, against an
    eager twin: outputs, input and parameter gradients, buffers, step by step (float32).

    ``progress`` receives the results so far after each mode/path (compiling is the slow
    part: a run stopped by its time limit keeps what was done)."""
    shapes = ([(2, 16, 6, 6), (2, 16, 8, 5), (3, 16, 4, 7)] if quick else
              [(2, 64, 16, 16), (2, 64, 24, 20), (3, 64, 12, 28)])
    results = {}
    for mode in ('micro', 'batch'):
        for path in ('few_ops', 'two_pass'):
            key = f'{mode}/{path}'
            if clock.left() < 45:
                results[key] = {'pass': None, 'skipped': 'time budget'}
                continue
            torch._dynamo.reset()  # a fresh cache: each module gets the recompile limit
            gen = torch.Generator().manual_seed(5)
            eager = layers.BCN(shapes[0][1], num_groups=8, momentum=0.3, mode=mode,
                               training_path=path).to(device).train()
            with torch.no_grad():
                for name, value in random_bcn_params(shapes[0][1], gen).items():
                    getattr(eager, name).copy_(value)
            twin = copy.deepcopy(eager)
            compiled = torch.compile(twin, backend=backend, fullgraph=True)
            entry = {'pass': True, 'steps': []}
            begin = time.perf_counter()
            try:
                for shape in shapes:
                    x64 = bcn_inputs(shape, 1, gen)[0]
                    grad = torch.randn(*shape, generator=gen).to(device)
                    outs, input_grads = [], []
                    for module in (eager, compiled):
                        module.zero_grad()
                        x = x64.to(device, torch.float32).requires_grad_(True)
                        out = module(x)
                        out.backward(grad)
                        outs.append(out)
                        input_grads.append(x.grad)
                    named = {'output': (outs[1], outs[0]),
                             'input_grad': (input_grads[1], input_grads[0])}
                    named.update({f'{n}_grad': (q.grad, p.grad) for (n, p), q in
                                  zip(eager.named_parameters(), twin.parameters())})
                    named.update({n: (q.float(), p.float()) for (n, p), q in
                                  zip(eager.named_buffers(), twin.buffers())})
                    checked = compare(named, TOLERANCES['compile'])
                    checked['shape'] = shape
                    entry['steps'].append(checked)
                    entry['pass'] = entry['pass'] and checked['pass']
            except Exception as error:  # noqa: BLE001 -- a compile failure is a finding
                entry['pass'] = False
                entry['error'] = f'{type(error).__name__}: {error}'[:1000]
            entry['seconds'] = time.perf_counter() - begin
            results[key] = entry
            progress({'pass': None, 'backend': backend, 'partial': True, 'modes': results})
    ran = [v['pass'] for v in results.values() if v['pass'] is not None]
    return {'pass': all(ran) if ran else None, 'backend': backend, 'fullgraph': True,
            'shapes': shapes, 'modes': results}


# ----------------------------------------------------------------------------------------


def machine(device: torch.device) -> Dict:
    """What ran the check."""
    info = {'python': platform.python_version(), 'torch': torch.__version__,
            'platform': platform.platform(), 'cpu_count': os.cpu_count(), 'device': str(device)}
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update({'gpu': props.name, 'gpu_memory_gib': props.total_memory / 2**30,
                     'multiprocessors': props.multi_processor_count,
                     'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version()})
    return info


def summary(name: str, result: Dict) -> List[str]:
    """Short lines for the console: failed checks, kernel counts, time ratios."""
    lines = []
    if name == 'reference':
        lines += [f'  FAIL {part} {key}' for part in ('bcn', 'conv_ws')
                  for key, check in result.get(part, {}).items() if not check['pass']]
    elif name == 'signatures':
        lines += [f'  FAIL {kind} {key}: {check}' for kind in ('schemas', 'calls')
                  for key, check in result.get(kind, {}).items() if not check['pass']]
    elif name == 'kernels':
        lines += [f'  {key}: {c["count"]} {c["unit"]}, host syncs {c.get("host_syncs", "-")}'
                  for key, c in result.get('counts', {}).items()]
    elif name == 'timing':
        for shape, entry in result.get('shapes', {}).items():
            ratios = ', '.join(f'{k} {v[r]:.2f}' for kind, r in (('norm', 'ratio_to_GroupNorm'),
                                                                  ('conv', 'ratio_to_Conv2d'))
                               for k, v in entry.get(kind, {}).items())
            lines.append(f'  {shape}: {ratios or entry.get("skipped")}')
    elif name == 'resnet50':
        lines += [f'  {key}: {v["median_ms"]:.2f} ms ({v["ratio_to_GN"]:.3f}x GN), peak '
                  f'{v.get("peak_above_resident_mib", float("nan")):.0f} MiB'
                  for key, v in result.get('variants', {}).items()]
    elif name == 'compile':
        lines += [f'  {key}: pass={v["pass"]} {v.get("error", v.get("skipped", ""))}'
                  for key, v in result.get('modes', {}).items()]
    return lines


def write(path: Path, report: Dict) -> None:
    """Write the JSON atomically (a run stopped mid-way leaves the last complete one)."""
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path('gpu_check.json'))
    parser.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu'")
    parser.add_argument('--quick', action='store_true',
                        help='tiny shapes, 1-2 timing iterations (the CPU test)')
    parser.add_argument('--budget-s', type=float, default=300.0,
                        help='stop starting sections after this many seconds')
    parser.add_argument('--compile-backend', default=None,
                        help="torch.compile backend (default 'inductor'; with --quick "
                             "'aot_eager_decomp_partition', which needs no C++ compiler)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type not in ('cuda', 'cpu'):
        parser.error(f"--device must be 'cuda' or 'cpu', got {args.device!r}")
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but torch.cuda.is_available() is False; use --device cpu')
    backend = args.compile_backend or ('aot_eager_decomp_partition' if args.quick
                                       else 'inductor')
    clock = Clock(args.budget_s)
    torch.manual_seed(0)
    report = {'machine': machine(device), 'quick': args.quick, 'sections': {}}
    try:
        layers = load_layers()
    except Exception as error:  # noqa: BLE001 -- say why in the JSON that comes back
        report.update({'pass': False, 'error': f'loading the layers: {type(error).__name__}: '
                                               f'{error}'[:1000]})
        write(args.out, report)
        raise

    def save(name: str, result: Dict) -> None:
        report['sections'][name] = result
        report['elapsed_s'] = clock.elapsed()
        write(args.out, report)

    report['mmws_layers_from'] = str(Path(layers.functional.__file__).parent)
    sections = [
        ('signatures', lambda: check_signatures(device)),
        ('reference', lambda: check_reference(layers, device, args.quick)),
        ('kernels', lambda: check_kernels(layers, device, args.quick)),
        ('timing', lambda: time_layers(layers, device, args.quick, clock)),
        ('resnet50', lambda: time_resnet50(layers, device, args.quick, clock)),
        ('compile', lambda: check_compile(layers, device, args.quick, clock, backend,
                                          lambda partial: save('compile', partial))),
    ]
    for name, run in sections:
        begin = time.perf_counter()
        print(f'[gpu_check] {name} ...', flush=True)
        try:
            result = run()
        except Exception as error:  # noqa: BLE001 -- one broken section must not hide the rest
            result = {'pass': False, 'error': f'{type(error).__name__}: {error}'[:1000],
                      'traceback': traceback.format_exc()[-3000:]}
        result['seconds'] = time.perf_counter() - begin
        save(name, result)
        print(f'[gpu_check] {name}: pass={result.get("pass", "n/a")} '
              f'{result.get("skipped", "")} ({result["seconds"]:.1f} s)', flush=True)
        for line in summary(name, result):
            print(line, flush=True)
    checks = [s['pass'] for s in report['sections'].values() if s.get('pass') is not None]
    report['pass'] = all(checks)
    write(args.out, report)
    print(f'[gpu_check] pass={report["pass"]} in {clock.elapsed():.1f} s -> {args.out}')
    return 0 if report['pass'] else 1


if __name__ == '__main__':
    sys.exit(main())
