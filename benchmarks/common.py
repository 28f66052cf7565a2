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
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
import warnings
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Callable, Dict, Iterable, List, Mapping, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def timed_ms(call: Callable[[], object], device: str = 'cpu') -> float:
    """Milliseconds of one ``call()``: wall time on the CPU, CUDA events on a GPU (the device
    time from the first launch to the last kernel's end)."""
    if device == 'cpu':
        begin = time.perf_counter()
        call()
        return (time.perf_counter() - begin) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_interleaved(variants: Mapping[str, Callable[[], object]], repeats: int,
                     warmup: int = 1, min_seconds: float = 0.0,
                     max_repeats: int = 200, device: str = 'cpu') -> Dict[str, float]:
    """Median time in milliseconds of each variant, measured interleaved.

    Args:
        variants: Name → a call to time (its result is discarded).
        repeats: Timed calls per variant (the median is taken over them), at least.
        warmup: Untimed rounds first (allocator, caches, lazy initialization).
        min_seconds: Raise ``repeats`` (up to ``max_repeats``) until the timed rounds are
            expected to take this long, judged from the last warm-up round: fast calls get
            more samples.
        max_repeats: Upper bound of the raised ``repeats``.
        device: ``'cpu'`` (wall time) or ``'cuda'`` (CUDA events, see :func:`timed_ms`).

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
            samples[name].append(timed_ms(variants[name], device))
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


# Aten operators that launch no work (views, metadata, allocation) and the host syncs: the
# classification of the operator-count protocol (see `operator_counts`), shared with the
# project's external operator-count tool, so that both count the same.
NOT_COMPUTE = frozenset({
    'view', 'reshape', '_reshape_alias', 'expand', 'as_strided', 'unsqueeze', 'squeeze',
    'select', 'slice', 't', 'transpose', 'permute', 'detach', 'alias', 'lift_fresh', 'empty',
    'empty_like', 'empty_strided', 'resolve_conj', 'resolve_neg', 'flatten', 'view_as',
    'expand_as', 'unflatten', 'split', 'chunk', 'contiguous', 'to', '_to_copy',
    'requires_grad_', 'result_type', 'is_nonzero', 'item', '_local_scalar_dense', 'size',
    'stride', 'numel', 'dim', 'is_same_size', 'set_', 'unbind', '_unsafe_view', 'narrow', 'clone'
})
HOST_SYNC = frozenset({'item', '_local_scalar_dense', 'is_nonzero'})


def operator_counts(call: Callable[[], object], device: str = 'cpu') -> Dict[str, object]:
    """The operators one ``call()`` launches, as a GPU would launch them.

    The protocol (the tests assert budgets with it): one untimed warm-up call, then the
    profiler records one call; every aten operator whose parent is not an aten operator (the
    top level) counts, ``compute`` being all of them but :data:`NOT_COMPUTE` (views, metadata,
    allocation: each counted one is at least one kernel launch on a GPU) and ``host_syncs``
    those in :data:`HOST_SYNC` (a device-to-host copy that stalls the GPU queue). For a layer
    the call is ``layer(x).sum().backward()``: the loss ``sum``, the backward's seed
    (``ones_like``) and the accumulation of each gradient into an existing ``.grad`` (after
    the warm-up) are counted too. ``names`` gives the compute operators by name; on
    ``device='cuda'`` also ``kernels``: the CUDA kernels actually launched.
    """
    call()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    with profile(activities=activities) as prof:
        call()
        if device == 'cuda':
            torch.cuda.synchronize()
    names = [event.name[len('aten::'):] for event in prof.events()
             if event.name.startswith('aten::') and not (
                 event.cpu_parent and event.cpu_parent.name.startswith('aten::'))]
    compute = [name for name in names if name not in NOT_COMPUTE]
    counts: Dict[str, int] = {}
    for name in compute:
        counts[name] = counts.get(name, 0) + 1
    result = dict(compute=len(compute), host_syncs=sum(name in HOST_SYNC for name in names),
                  names=counts)
    if device == 'cuda':
        result['kernels'] = sum(event.device_type == torch.autograd.DeviceType.CUDA
                                for event in prof.events())
    return result


def import_bcn_before(folder: Path) -> type:
    """Another revision's ``BCN`` class, side by side with the installed one.

    ``folder`` holds that revision's ``mmws/models/bcn.py``, ``functional.py`` and
    ``load_checks.py`` (e.g. ``git show main:mmws/models/bcn.py > folder/bcn.py``); they are
    imported as the package ``mmws_before.models``, their registry decorator a no-op.
    """
    package = types.ModuleType('mmws_before')
    package.__path__ = []
    models = types.ModuleType('mmws_before.models')
    models.__path__ = [str(folder)]
    registry = types.ModuleType('mmws_before.registry')

    class _Unregistered:

        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    registry.MODELS = _Unregistered()
    sys.modules.update({'mmws_before': package, 'mmws_before.models': models,
                        'mmws_before.registry': registry})
    return importlib.import_module('mmws_before.models.bcn').BCN


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
                system=f'{platform.system()} {platform.release()}',
                load_average=[round(load, 2) for load in os.getloadavg()],
                malloc_mmap_threshold=os.environ.get('MALLOC_MMAP_THRESHOLD_',
                                                     'glibc default (dynamic, from 128 KiB)'))


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
    rows = [(t['name'], f'{t["value"]:.3g}', f'≤ {t["limit"]:g}', _status(t)) for t in targets]
    return markdown_table(('target', 'measured', 'limit', 'status'), rows)


def _status(target: Mapping) -> str:
    if target['met']:
        return 'met'
    if target['limit'] == 0:
        return 'missed'
    return f'missed by {target["value"] / target["limit"] - 1:.0%}'


def ratio(row: Mapping, name: str, baseline: str, key: str = 'ms') -> float:
    """``row['variants'][name][key] / row['variants'][baseline][key]``."""
    return row['variants'][name][key] / row['variants'][baseline][key]


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with what lies between the lines ``begin`` and ``end`` replaced by ``block``.

    Raises:
        ValueError: A marker is missing, or ``end`` comes before ``begin``.
    """
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f'expected the markers {begin!r} and then {end!r}')
    return text[:start + len(begin)] + '\n' + block.strip('\n') + '\n' + text[stop:]
