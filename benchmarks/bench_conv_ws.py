"""ConvWS benchmark: a ResNet GN backbone with ``nn.Conv2d``, timm's ``StdConv2d`` design and
``mmws.ConvWS`` (identical weights), training and inference, side by side in one process.

- **Time.** mmdet's ``ResNet`` (depth 50, GN, all stages trainable) at 1 random image: training
  is forward + backward of every parameter, inference ``eval()`` under ``torch.no_grad()``.
  The variants run interleaved (round-robin, the first variant rotating), and each round's
  time is divided by that round's ``Conv2d`` time: a load that comes and goes slows a round's
  variants alike, so the per-round ratios are steadier than the times. Reported: the median
  ratio and its spread (quartiles, min, max) over the rounds, and the median times.
- **Where the time goes.** The standardization alone (forward + backward over every conv
  weight of the backbone, as ``ConvWS`` and ``StdConv2d`` run it), timed interleaved with the
  ``Conv2d`` step, and the profiler's top operators of one ConvWS training step.

``timm StdConv2d`` is timm's design (``timm/layers/std_conv.py``; timm is not a dependency:
``bench_layers.StdConv2d`` restates it): one ``F.batch_norm`` over the weight viewed as
``(1, O, n)`` (biased variance, eps inside the root), its backward native. ``Conv2d on W * 1``
is the floor of any weight reparameterization (a weight-sized pass each way, no statistics).
On a loaded machine, ``--threads 1 --clock process`` measures the work done (CPU time of one
thread), which other processes barely move; wall time at 2 threads is what users see.

Writes ``benchmarks/results/conv_ws.json``. Run: ``.venv/bin/python benchmarks/bench_conv_ws.py``
(2 threads, 512², 15 rounds: about 8 minutes on 2 quiet cores, 20 on loaded ones);
``--quick`` for a smoke run (ResNet-18, 32 pixels, 2 rounds, 1 thread).
"""
import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from statistics import median, quantiles
from typing import Callable, Dict, List, Mapping

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from bench_layers import StdConv2d
from bench_models import GN, with_convs
from common import RESULTS_DIR, check_targets, machine, revision, targets_table, utc_now, \
    write_json
from mmws import ConvWS
from mmws.models.functional import standardize_weight, unbiased_row_scale

class ReparameterizedConv2d(nn.Conv2d):
    """The floor of any weight reparameterization: the conv runs on ``W * 1``, a fresh
    weight-sized tensor (one weight-sized pass forward and one backward, no statistics)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * 1.0, self.bias)


CONVS = {'Conv2d': nn.Conv2d, 'Conv2d on W * 1 (floor)': ReparameterizedConv2d,
         'timm StdConv2d': StdConv2d, 'mmws ConvWS': ConvWS,
         'mmws ConvWS eps_inside_sqrt': partial(ConvWS, eps_inside_sqrt=True)}
BASELINE = 'Conv2d'
CLOCKS = {'wall': time.perf_counter, 'process': time.process_time}


def interleaved_samples(variants: Mapping[str, Callable[[], object]], rounds: int,
                        warmup: int, clock: Callable[[], float]) -> Dict[str, List[float]]:
    """Milliseconds of every call by ``clock``, ``rounds`` rounds of all variants, the first
    rotating."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for index in range(rounds):
        start = index % len(names)
        for name in names[start:] + names[:start]:
            begin = clock()
            variants[name]()
            samples[name].append((clock() - begin) * 1e3)
    return samples


def spread(values: List[float]) -> Dict[str, float]:
    """Median, quartiles, min and max of ``values``."""
    q1, _, q3 = quantiles(values, n=4) if len(values) > 1 else (values[0], None, values[0])
    return dict(median=median(values), q1=q1, q3=q3, min=min(values), max=max(values))


def summarize(samples: Dict[str, List[float]]) -> Dict[str, Dict[str, object]]:
    """Per variant: median ms and the per-round ratio to ``Conv2d`` with its spread."""
    base = samples[BASELINE]
    return {name: dict(ms=median(values),
                       ratio=spread([value / b for value, b in zip(values, base)]))
            for name, values in samples.items()}


def standardization_alone(model: nn.Module) -> Dict[str, Callable[[], object]]:
    """Forward + backward of the standardization of every conv weight of ``model``, as
    ``mmws.ConvWS`` (default form) and timm's ``StdConv2d`` compute it."""
    weights = [m.weight.detach().requires_grad_() for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    grads = [torch.randn_like(weight) for weight in weights]
    row_scales = [unbiased_row_scale(w.shape[0], w[0].numel()) for w in weights]

    def mmws():
        outs = [standardize_weight(w, 1e-5, True, False, s) for w, s in zip(weights, row_scales)]
        torch.autograd.backward(outs, grads)

    def timm():
        outs = [torch.nn.functional.batch_norm(w.reshape(1, w.shape[0], -1), None, None,
                                               training=True, momentum=0.0,
                                               eps=1e-5).view_as(w) for w in weights]
        torch.autograd.backward(outs, grads)

    return {'mmws ConvWS standardization': mmws, 'timm StdConv2d standardization': timm}


def top_operators(call: Callable[[], object], count: int) -> List[Dict[str, object]]:
    """The ``count`` aten operators with the most self CPU time in one ``call()``."""
    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted((e for e in prof.key_averages() if e.key.startswith('aten::')),
                    key=lambda e: e.self_cpu_time_total, reverse=True)
    return [dict(name=e.key, calls=e.count, self_ms=e.self_cpu_time_total / 1e3)
            for e in events[:count]]


def bench(size: int, depth: int, rounds: int, warmup: int, clock: str) -> Dict[str, object]:
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    base = ResNet(depth=depth, frozen_stages=-1, norm_cfg=GN, norm_eval=False)
    # ConvWS refuses filters of one weight; ResNet has none (its 1×1 convs are not depthwise).
    models = {name: with_convs(base, conv_type) for name, conv_type in CONVS.items()}
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        grad_outs = [torch.randn_like(out) for out in base(x)]

    def training(model: nn.Module) -> Callable[[], object]:
        model.train()
        params = list(model.parameters())
        return lambda: torch.autograd.grad(model(x), params, grad_outs)

    def inference(model: nn.Module) -> Callable[[], object]:
        def call():
            with torch.no_grad():
                return model(x)
        model.eval()
        return call

    train = {name: training(model) for name, model in models.items()}
    timer = partial(interleaved_samples, rounds=rounds, warmup=warmup, clock=CLOCKS[clock])
    result = dict(size=size, depth=depth, rounds=rounds, warmup=warmup, clock=clock,
                  load_before=os.getloadavg())
    result['train'] = summarize(timer(train))
    result['eval'] = summarize(timer({name: inference(model) for name, model in models.items()}))
    alone = timer({BASELINE: train[BASELINE], **standardization_alone(models[BASELINE])})
    result['standardization'] = summarize(alone)
    result['profile'] = {name: top_operators(train[name], 8) for name in ('Conv2d',
                                                                            'mmws ConvWS')}
    result['load_after'] = os.getloadavg()
    return result


def print_report(result: Mapping) -> None:
    for phase in ('train', 'eval', 'standardization'):
        print(f'\n{phase} (per-round ratio to Conv2d: median [q1, q3] (min, max)):')
        for name, row in result[phase].items():
            r = row['ratio']
            print(f'  {name:32s} {row["ms"]:9.1f} ms  {r["median"]:.3f} [{r["q1"]:.3f}, '
                  f'{r["q3"]:.3f}] ({r["min"]:.3f}, {r["max"]:.3f})')
    for name, rows in result['profile'].items():
        print(f'\nprofile of one {name} training step, top operators by self CPU time:')
        for row in rows:
            print(f'  {row["name"]:40s} {row["calls"]:4d} calls {row["self_ms"]:9.1f} ms')
    print(f'\nload average before {result["load_before"]}, after {result["load_after"]}')


def targets(result: Mapping) -> List[Dict[str, object]]:
    depth = result['depth']
    return check_targets([
        dict(name=f'ResNet-{depth} GN training, mmws ConvWS / Conv2d (median per-round ratio)',
             value=result['train']['mmws ConvWS']['ratio']['median'], limit=1.05),
        dict(name=f'ResNet-{depth} GN eval, mmws ConvWS / Conv2d (median per-round ratio)',
             value=result['eval']['mmws ConvWS']['ratio']['median'], limit=1.01),
    ])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='ResNet-18 at 32 pixels, 2 rounds, no warm-up (a smoke run)')
    parser.add_argument('--size', type=int, default=512, help='input side in pixels')
    parser.add_argument('--rounds', type=int, default=15, help='timed rounds per phase')
    parser.add_argument('--clock', choices=sorted(CLOCKS), default='wall',
                        help="wall time, or the process's CPU time (at 1 thread: the work "
                        'done, barely moved by other processes on a loaded machine)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: 2; 1 with --quick)')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'conv_ws.json')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    depth, warmup = (18, 0) if args.quick else (50, 1)
    if args.quick:
        args.size, args.rounds = 32, 2
    payload = dict(benchmark='conv_ws', taken_at=utc_now(), revision=revision(),
                   machine=machine(), quick=args.quick,
                   backbone=bench(args.size, depth, args.rounds, warmup, args.clock))
    print(f'ResNet-{depth} GN at 1×3×{args.size}², {torch.get_num_threads()} threads, '
          f'{args.clock} clock')
    print_report(payload['backbone'])
    payload['targets'] = targets(payload['backbone'])
    print('\nTargets:\n' + targets_table(payload['targets']))
    write_json(args.out, payload)
    print(f'\nwrote {args.out}')
    return payload


if __name__ == '__main__':
    main(sys.argv[1:])
