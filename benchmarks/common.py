"""Shared measurement helpers of the mmws benchmarks: timing, memory, machine, JSON, tables.

Timing takes the median of repeated calls after a warm-up, and measures the compared variants
*interleaved* (round-robin, the starting variant rotating each round), so a background load
that comes and goes slows all of them alike and their ratios stay meaningful on a shared
machine. Memory is measured two ways, both deterministic:

- ``saved_bytes``: what the forward keeps for the backward (the activations), as the total size
  of the unique storages packed by ``torch.autograd.graph.saved_tensors_hooks``;
- ``peak_bytes``: the peak of the profiler's memory timeline over one call (every tensor alive
  during the call, inputs and parameters included).
"""
import gzip
import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Callable, Dict, Iterable, List, Mapping, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def time_interleaved(variants: Mapping[str, Callable[[], object]], repeats: int,
                     warmup: int = 1, min_seconds: float = 0.0,
                     max_repeats: int = 200) -> Dict[str, float]:
    """Median wall time in milliseconds of each variant, measured interleaved.

    Args:
        variants: Name → a call to time (its result is discarded).
        repeats: Timed calls per variant (the median is taken over them), at least.
        warmup: Untimed rounds first (allocator, caches, lazy initialization).
        min_seconds: Raise ``repeats`` (up to ``max_repeats``) until the timed rounds are
            expected to take this long, judged from the last warm-up round: fast calls get
            more samples.
        max_repeats: Upper bound of the raised ``repeats``.

    Returns:
        Name → median milliseconds.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'need repeats >= 1 and warmup >= 0, got repeats={repeats}, '
                         f'warmup={warmup}')
    names = list(variants)
    round_seconds = 0.0
    for _ in range(warmup):
        begin = time.perf_counter()
        for name in names:
            variants[name]()
        round_seconds = time.perf_counter() - begin
    if min_seconds > 0 and round_seconds > 0:
        repeats = max(repeats, min(max_repeats, int(min_seconds / round_seconds)))
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            begin = time.perf_counter()
            variants[name]()
            samples[name].append((time.perf_counter() - begin) * 1e3)
    return {name: median(values) for name, values in samples.items()}


def saved_bytes(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the unique storages the autograd graph of ``forward()`` keeps for backward.

    Views of one storage (and a tensor saved by several nodes) count once; the storages of
    ``exclude`` (a model's parameters: they are kept anyway) do not count. The graph is
    released before returning.
    """
    storages: Dict[int, int] = {}
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    del result
    return sum(storages.values())


def peak_bytes(call: Callable[[], object]) -> int:
    """Peak CPU memory of the tensors alive during ``call()``, from the profiler's timeline."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        call()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'timeline.json.gz')
        with warnings.catch_warnings():
            # Deprecated for CUDA in favour of memory snapshots, which do not cover the CPU.
            warnings.simplefilter('ignore', FutureWarning)
            prof.export_memory_timeline(path, device='cpu')
        with gzip.open(path, 'rt') as file:
            _, sizes = json.load(file)
    return int(max((sum(by_category) for by_category in sizes), default=0))


def machine() -> Dict[str, object]:
    """The machine and software the numbers were taken on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__,
                system=f'{platform.system()} {platform.release()}')


def revision() -> str:
    """The repository's commit (``-dirty`` with uncommitted changes), or ``'unknown'``."""
    try:
        return subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=RESULTS_DIR.parent,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max(1, max |expected|)``: the error relative to the tensor's
    scale, absolute for tensors below 1 (gradients that are zero in exact arithmetic, as
    BCN's batch affine under one channel per group, have only rounding noise)."""
    scale = expected.abs().max().clamp_min(1.0)
    return float((actual - expected).abs().max() / scale)


def write_json(path: Path, payload: Mapping) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + '\n')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|']
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def mib(num_bytes: float) -> str:
    return f'{num_bytes / 2**20:.1f}'


def check_targets(targets: Sequence[Mapping]) -> List[Dict[str, object]]:
    """Evaluates ``dict(name, value, limit)`` targets (``value <= limit``) and adds ``met``."""
    return [dict(target, met=bool(target['value'] <= target['limit'])) for target in targets]


def targets_table(targets: Sequence[Mapping]) -> str:
    rows = [(t['name'], f'{t["value"]:.3g}', f'≤ {t["limit"]:g}',
             'met' if t['met'] else f'missed by {t["value"] / t["limit"] - 1:.0%}')
            for t in targets]
    return markdown_table(('target', 'measured', 'limit', 'status'), rows)


def ratio(row: Mapping, name: str, baseline: str, key: str = 'ms') -> float:
    """``row['variants'][name][key] / row['variants'][baseline][key]``."""
    return row['variants'][name][key] / row['variants'][baseline][key]
