"""The toy study: do the paper's micro-batch claims show up at toy scale, on the CPU, with seeds?

Runs every cell of :func:`study_cells` as a subprocess of the project's tools (one CPU thread
each, ``--workers`` at a time), appends one record per finished run to
``projects/toy/results/toy_study.json`` as it finishes, skips runs already recorded (so an
interrupted study resumes where it stopped), then prints mean ± std tables and draws
``projects/toy/results/toy_study.png``. The experiments:

- ``pretrain``: the ResNet-18 classifier on the toy classification crops at 32 crops per step,
  per norm (BCN in batch mode): the toy "ImageNet" backbones (seed 0 only);
- ``micro``: the same classifier trained from scratch at 1 and at 2 crops per step (BCN in
  micro-batch mode): top-1 accuracy;
- ``finetune``: the toy Mask R-CNN at 1 image per step from each pretrained backbone (BN with
  frozen statistics, BCN in micro-batch mode): box / mask AP;
- ``scratch``: the same detectors from scratch, and the from-scratch gap's targeted variants;
- ``seg``: the toy DeepLabV3 at 1 image per step, from scratch (GN, GN+WS, BCN+WS): mIoU and
  each class's IoU;
- ``seg16``: the same toy DeepLabV3 at 16 images per step, the paper's VOC batch, from scratch
  (BN, GN, GN+WS, and BCN+WS with its batch part on the 16 images' statistics): mIoU and each
  class's IoU, set beside each norm's 1-image run.

Cells are ordered so the most important finish first (see :func:`study_cells`).

Run: ``.venv/bin/python projects/toy/tools/toy_study.py [--workers 2] [--seeds 3] [--report]``.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Dict, List, Optional, Sequence, Tuple

from mmws_toy.voc import CLASSES as SEG_CLASSES

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / 'benchmarks'))  # the benchmarks' helpers: machine, tables, JSON
from common import (machine, markdown_table, replace_block, revision,  # noqa: E402
                    utc_now, write_json)

RESULTS_DIR = Path(__file__).resolve().parents[1] / 'results'
# The blocks of the project's README that --readme rewrites.
TOY_BEGIN = '<!-- toy study: rendered by tools/toy_study.py --report --readme README.md -->'
TOY_END = '<!-- end of toy study -->'
SEG_BEGIN = '<!-- toy segmentation: rendered by tools/toy_study.py --report --readme README.md -->'
SEG_END = '<!-- end of toy segmentation -->'
NORMS = ('BN', 'GN', 'GN+WS', 'BCN+WS')
SLUG = {'BN': 'bn', 'GN': 'gn', 'GN+WS': 'gn-ws', 'BCN+WS': 'bcn-ws'}
# The detectors' norm slots: an option on the norm reaches every BCN of the model.
NORM_SLOTS = ('model.backbone', 'model.neck', 'model.roi_head.bbox_head',
              'model.roi_head.mask_head')
# Detector runs of the study: 300 steps at 1 image (the fine-tuning configs' schedule; the
# from-scratch configs' is 400), evaluated once at the end.
DET_ITERS = 300
# The toy segmentation's norms: BN cannot train the toy DeepLabV3 at 1 image per step (ASPP's
# image-pool branch leaves it one value per channel; its config takes 2 images).
SEG_NORMS = ('GN', 'GN+WS', 'BCN+WS')
# At 16 images per step every norm trains, BN included.
SEG16_NORMS = NORMS
# The toy segmentation's experiments: images per step and norms.
SEG_EXPERIMENTS = {'seg': (1, SEG_NORMS), 'seg16': (16, SEG16_NORMS)}
METRICS = {'pretrain': ('accuracy/top1', ), 'micro': ('accuracy/top1', ),
           'finetune': ('coco/bbox_mAP', 'coco/segm_mAP'),
           'scratch': ('coco/bbox_mAP', 'coco/segm_mAP'),
           'seg': ('mIoU', ) + tuple(f'IoU.{name}' for name in SEG_CLASSES),
           'seg16': ('mIoU', ) + tuple(f'IoU.{name}' for name in SEG_CLASSES)}


@dataclass
class Cell:
    """One run of the study.

    Attributes:
        name: Unique name (the work dir's name); a record is keyed by it.
        experiment: ``'pretrain'``, ``'micro'``, ``'finetune'``, ``'scratch'``, ``'seg'`` or
            ``'seg16'``.
        norm: One of :data:`NORMS`.
        seed: MMEngine's ``randomness.seed``.
        setting: What distinguishes the cell within its experiment and norm (e.g.
            ``{'batch': 1}``, ``{'variant': 'r=0.3'}``), recorded with the result.
        config: Config path, relative to the repository.
        options: ``--cfg-options`` beyond the seed.
        needs: Name of the cell whose output this one reads (its pretrained backbone).
    """
    name: str
    experiment: str
    norm: str
    seed: int
    setting: Dict[str, object]
    config: str
    options: List[str] = field(default_factory=list)
    needs: Optional[str] = None


def norm_options(key: str, value: object) -> List[str]:
    """``--cfg-options`` setting ``norm_cfg.<key>`` in every norm slot of a detector."""
    return [f'{slot}.norm_cfg.{key}={value}' for slot in NORM_SLOTS]


def backbone_path(work_root: str, norm: str, seed: int = 0) -> str:
    suffix = f'_seed{seed}' if seed else ''
    return osp.join(work_root, 'checkpoints', f'resnet18_{SLUG[norm]}_1xb32-toy_cls{suffix}.pth')


def gap_variants() -> List[Tuple[str, str, List[str]]]:
    """The from-scratch gap's targeted variants: ``(norm, variant, --cfg-options)``."""
    return [
        ('BCN+WS', 'r=0.3', norm_options('momentum', 0.3)),
        ('GN+WS', 'lr 0.01', ['optim_wrapper.optimizer.lr=0.01']),
    ]


def study_cells(seeds: int, work_root: str, det_iters: int = DET_ITERS) -> List[Cell]:
    """Every run of the study, most important first.

    The order: the four pretrainings; the core comparisons (fine-tuning, micro-batch
    classification), seed by seed; the from-scratch detectors and the gap's rate variant, seed
    by seed; the fine-tuned BCN+WS at the gap's rate; the from-scratch BN and GN+WS at lr 0.01;
    a second BCN+WS pretraining and one fine-tuning from it; then the toy segmentation at 1
    image per step, seed by seed (its configs' own schedule); last the toy segmentation at 16
    images per step, seed by seed, GN+WS and BCN+WS first in each seed.
    """
    def suffix(variant):
        return '' if variant == 'default' else '_' + variant.replace(' ', '').replace('=', '')

    det = [f'train_cfg.max_iters={det_iters}', f'train_cfg.val_interval={det_iters}',
           f'default_hooks.checkpoint.interval={det_iters}']

    def finetune(norm, seed, variant='default', options=(), backbone_seed=0):
        pretrain = f'pretrain_{SLUG[norm]}' + (f'_seed{backbone_seed}' if backbone_seed else '')
        return Cell(f'finetune_{SLUG[norm]}{suffix(variant)}_s{seed}', 'finetune', norm, seed,
                    {'iters': det_iters, 'variant': variant},
                    f'projects/toy/configs/mask-rcnn_r18-toypre_fpn_{SLUG[norm]}_1xb1-toy_coco.py',
                    det + [f'model.backbone.init_cfg.checkpoint='
                           f'{backbone_path(work_root, norm, backbone_seed)}'] + list(options),
                    pretrain)

    def micro(norm, batch, seed):
        return Cell(f'micro_{SLUG[norm]}_b{batch}_s{seed}', 'micro', norm, seed,
                    {'batch': batch}, f'projects/toy/configs/resnet18_{SLUG[norm]}_1xb{batch}-toy_cls.py')

    def scratch(norm, seed, variant='default', options=()):
        return Cell(f'scratch_{SLUG[norm]}{suffix(variant)}_s{seed}', 'scratch', norm, seed,
                    {'iters': det_iters, 'variant': variant},
                    f'projects/toy/configs/mask-rcnn_r18_fpn_{SLUG[norm]}_1xb1-toy_coco.py',
                    det + list(options))

    def core(seed):
        return ([finetune(n, seed) for n in NORMS] +
                [micro(n, batch, seed) for batch in (1, 2) for n in NORMS])

    def gap(seed):
        norm, variant, options = gap_variants()[0]
        return ([scratch(n, seed) for n in ('GN', 'GN+WS', 'BCN+WS')] +
                [scratch(norm, seed, variant, options)])

    def rate_finetune(seed):
        norm, variant, options = gap_variants()[0]
        return [finetune(norm, seed, variant, options)]

    def second_pretraining(seed):
        # The fine-tuning rows' spread is over fine-tuning seeds from one pretrained backbone;
        # a second pretraining (seed 1) of BCN+WS shows how much the backbone's own draw moves.
        if seed:
            return []
        pretrain = Cell('pretrain_bcn-ws_seed1', 'pretrain', 'BCN+WS', 1,
                        {'batch': 32, 'variant': 'pretraining seed 1'},
                        'projects/toy/configs/resnet18_bcn-ws_1xb32-toy_cls.py')
        return [pretrain, finetune('BCN+WS', 0, 'pretraining seed 1', backbone_seed=1)]

    def last(seed):
        norm, variant, options = gap_variants()[1]
        return [scratch('BN', seed), scratch(norm, seed, variant, options)]

    def segmentation(seed):
        return [Cell(f'seg_{SLUG[norm]}_s{seed}', 'seg', norm, seed, {'images': 1},
                     f'projects/toy/configs/deeplabv3_r18-d16_{SLUG[norm]}_1xb1-toy_voc.py')
                for norm in SEG_NORMS]

    def segmentation16(seed):
        return [Cell(f'seg16_{SLUG[norm]}_s{seed}', 'seg16', norm, seed, {'images': 16},
                     f'projects/toy/configs/deeplabv3_r18-d16_{SLUG[norm]}_1xb16-toy_voc.py')
                for norm in ('GN+WS', 'BCN+WS', 'BN', 'GN')]

    cells = [Cell(f'pretrain_{SLUG[n]}', 'pretrain', n, 0, {'batch': 32},
                  f'projects/toy/configs/resnet18_{SLUG[n]}_1xb32-toy_cls.py') for n in NORMS]
    for group in (core, gap, rate_finetune, last, second_pretraining, segmentation,
                  segmentation16):
        for seed in range(seeds):
            cells += group(seed)
    return cells


def command(cell: Cell, work_root: str) -> List[str]:
    """The tool invocation of a cell."""
    work_dir = osp.join(work_root, cell.name)
    options = [f'randomness.seed={cell.seed}', *cell.options]
    if cell.experiment == 'pretrain':
        return [sys.executable, 'projects/toy/tools/pretrain_toy_backbone.py', cell.config, '--force',
                '--out', backbone_path(work_root, cell.norm, cell.seed), '--work-dir', work_dir,
                '--seed', str(cell.seed)] + (['--cfg-options', *cell.options]
                                             if cell.options else [])
    return [sys.executable, 'tools/train.py', cell.config, '--work-dir', work_dir,
            '--cfg-options', *options]


def run_cell(cell: Cell, work_root: str, threads: int) -> Dict[str, object]:
    """Run one cell in a fresh process; returns its record (``error`` set on failure)."""
    work_dir = osp.join(work_root, cell.name)
    shutil.rmtree(work_dir, ignore_errors=True)  # a run interrupted earlier starts over
    os.makedirs(work_dir)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    begin = time.time()
    with open(osp.join(work_dir, 'stdout.log'), 'w') as log:
        result = subprocess.run(command(cell, work_root), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    record = dict(name=cell.name, experiment=cell.experiment, norm=cell.norm, seed=cell.seed,
                  setting=cell.setting, config=cell.config, options=cell.options,
                  wall_s=round(time.time() - begin, 1), finished_at=utc_now(),
                  load_1min=round(os.getloadavg()[0], 2))
    metrics_path = osp.join(work_dir, 'metrics.json')
    if result.returncode != 0 or not osp.isfile(metrics_path):
        record['error'] = f'exit code {result.returncode}; see {work_dir}/stdout.log'
        return record
    with open(metrics_path) as f:
        last = json.load(f)[-1]
    record['metrics'] = {key: last[key] for key in METRICS[cell.experiment]}
    return record


def load_results(path: Path) -> Dict[str, object]:
    if path.is_file():
        return json.loads(path.read_text())
    return dict(runs=[], sessions=[])


def run_study(cells: Sequence[Cell], results_path: Path, work_root: str, workers: int,
              threads: int) -> Dict[str, object]:
    """Run the cells not yet recorded in ``results_path``, ``workers`` at a time, in order
    (a cell waits for the cell it needs); the results file is rewritten after every run."""
    results = load_results(results_path)
    done = {run['name'] for run in results['runs'] if 'error' not in run}
    results['runs'] = [run for run in results['runs'] if run['name'] in done]
    pending = [cell for cell in cells if cell.name not in done]
    session = dict(started_at=utc_now(), workers=workers, threads=threads,
                   machine=machine(), revision=revision(), runs=0)
    results['sessions'].append(session)
    failed: set = set()
    total, begin = len(pending), time.time()
    print(f'toy study: {total} runs to do, {len(done)} already recorded in {results_path}',
          flush=True)
    running: Dict[Future, Cell] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for cell in [c for c in pending if c.needs in failed]:
                pending.remove(cell)
                failed.add(cell.name)
                print(f'skip {cell.name}: {cell.needs} failed', flush=True)
            ready = [c for c in pending if c.needs is None or c.needs in done]
            while ready and len(running) < workers:
                cell = ready.pop(0)
                pending.remove(cell)
                running[pool.submit(run_cell, cell, work_root, threads)] = cell
                print(f'start {cell.name}', flush=True)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                record = future.result()
                results['runs'].append(record)
                if 'error' in record:
                    failed.add(cell.name)
                else:
                    done.add(cell.name)
                session.update(runs=session['runs'] + 1, finished_at=utc_now(),
                               wall_s=round(time.time() - begin, 1))
                write_json(results_path, results)
                shown = record.get('metrics', record.get('error'))
                print(f'[{session["runs"]}/{total}] {cell.name}: {shown} '
                      f'({record["wall_s"]:.0f} s; {time.time() - begin:.0f} s elapsed)',
                      flush=True)
    return results


def stats(values: Sequence[float]) -> Tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count."""
    return mean(values), (stdev(values) if len(values) > 1 else 0.0), len(values)


def grouped(runs: Sequence[dict], experiment: str, metric: str,
            key=lambda run: run['norm']) -> Dict[object, List[float]]:
    """Metric values of an experiment's finished runs, by ``key(run)``, in percent."""
    scale = 100.0 if metric.startswith('coco/') else 1.0
    groups: Dict[object, List[float]] = {}
    for run in runs:
        if run['experiment'] == experiment and 'metrics' in run:
            groups.setdefault(key(run), []).append(scale * run['metrics'][metric])
    return groups


def cell_text(values: Optional[Sequence[float]]) -> str:
    if not values:
        return '—'
    m, s, n = stats(values)
    return f'{m:.1f} ± {s:.1f} ({n})' if n > 1 else f'{m:.1f} (1)'


def separated(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two cells differ by more than their seed spread: the means differ by more than
    the sum of the two standard deviations (needs at least 2 seeds each)."""
    if len(a) < 2 or len(b) < 2:
        return False
    (ma, sa, _), (mb, sb, _) = stats(a), stats(b)
    return abs(ma - mb) > sa + sb


def comparisons(groups: Dict[str, List[float]]) -> List[str]:
    """The norm pairs whose difference exceeds the seed spread, as ``'A > B'``."""
    lines = []
    names = [n for n in NORMS if n in groups]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if separated(groups[a], groups[b]):
                hi, lo = (a, b) if mean(groups[a]) > mean(groups[b]) else (b, a)
                lines.append(f'{hi} > {lo}')
    return lines


def tables(runs: Sequence[dict]) -> str:
    """The study's markdown tables: mean ± std (number of seeds) per norm and setting."""
    out = []
    pre = grouped(runs, 'pretrain', 'accuracy/top1')
    micro = {batch: grouped([r for r in runs if r['setting'].get('batch') == batch], 'micro',
                            'accuracy/top1') for batch in (1, 2)}
    rows = [[norm, cell_text(pre.get(norm)), cell_text(micro[1].get(norm)),
             cell_text(micro[2].get(norm))] for norm in NORMS]
    out += ['**Classification** (toy crops, 5 classes, ResNet-18; top-1 %, mean ± std (seeds)):',
            '', markdown_table(['norm', 'batch 32 (pretraining)', 'batch 1', 'batch 2'], rows),
            '']
    for experiment, title in (('finetune', 'fine-tuned from the toy-pretrained backbone'),
                              ('scratch', 'from scratch')):
        def variant(run):
            return (run['norm'], run['setting'].get('variant', 'default'))
        box = grouped(runs, experiment, 'coco/bbox_mAP', variant)
        mask = grouped(runs, experiment, 'coco/segm_mAP', variant)
        if not box:
            continue
        rows = [[norm if v == 'default' else f'{norm}, {v}', cell_text(box[(norm, v)]),
                 cell_text(mask.get((norm, v)))]
                for norm in NORMS for v in ['default'] + sorted(
                    {k[1] for k in box if k[0] == norm and k[1] != 'default'})
                if (norm, v) in box]
        out += [f'**Toy Mask R-CNN, 1 image per step, {title}** (box / mask AP %, mean ± std '
                '(seeds)):', '', markdown_table(['norm', 'box AP', 'mask AP'], rows), '']
    return '\n'.join(out)


def seg_table(runs: Sequence[dict], experiment: str = 'seg') -> List[str]:
    """A toy segmentation experiment's table: mIoU and each class's IoU, mean ± std over seeds,
    and the lowest shape IoU of any run (whether every run learned every shape)."""
    images, norms = SEG_EXPERIMENTS[experiment]
    metrics = METRICS[experiment]
    groups = {metric: grouped(runs, experiment, metric) for metric in metrics}
    rows = []
    for norm in norms:
        if norm not in groups['mIoU']:
            continue
        shapes = [groups[f'IoU.{name}'][norm] for name in SEG_CLASSES[1:]]
        rows.append([norm] + [cell_text(groups[metric][norm]) for metric in metrics] +
                     [f'{min(min(values) for values in shapes):.1f}'])
    if not rows:
        return []
    per_step = f'{images} image' + ('s' if images > 1 else '')
    return [f'**Toy DeepLabV3, {per_step} per step, from scratch** (IoU %, mean ± std (seeds)):',
            '', markdown_table(['norm', 'mIoU', *SEG_CLASSES, 'lowest shape IoU of any run'],
                               rows), '']


def batch_table(runs: Sequence[dict]) -> List[str]:
    """Each norm's mIoU at 16 images per step beside its 1-image run, and the change."""
    one, sixteen = grouped(runs, 'seg', 'mIoU'), grouped(runs, 'seg16', 'mIoU')
    rows = []
    for norm in SEG16_NORMS:
        if norm not in sixteen:
            continue
        before, after = one.get(norm), sixteen[norm]
        if before:
            change = f'{mean(after) - mean(before):+.1f}' + (
                ' (beyond the seed spread)' if separated(before, after) else '')
        else:
            change = '—'
        rows.append([norm, cell_text(before), cell_text(after), change])
    if not rows:
        return []
    return ['**Toy DeepLabV3: 16 images per step against 1** (mIoU %, mean ± std (seeds); BN has '
            'no 1-image run: the image-pool branch gives it one value per channel):', '',
            markdown_table(['norm', '1 image per step', '16 images per step', 'change'], rows),
            '']


def spread_lines(runs: Sequence[dict]) -> List[str]:
    """Which norm differences exceed the seed spread, per experiment and metric."""
    lines = []
    checks = [('micro', 'accuracy/top1', 'batch 1', lambda r: r['setting'].get('batch') == 1),
              ('micro', 'accuracy/top1', 'batch 2', lambda r: r['setting'].get('batch') == 2),
              ('finetune', 'coco/bbox_mAP', 'fine-tuned box AP',
               lambda r: r['setting'].get('variant', 'default') == 'default'),
              ('finetune', 'coco/segm_mAP', 'fine-tuned mask AP',
               lambda r: r['setting'].get('variant', 'default') == 'default'),
              ('scratch', 'coco/bbox_mAP', 'from-scratch box AP',
               lambda r: r['setting'].get('variant', 'default') == 'default'),
              ('scratch', 'coco/segm_mAP', 'from-scratch mask AP',
               lambda r: r['setting'].get('variant', 'default') == 'default')]
    for experiment, metric, label, keep in checks:
        kept = [r for r in runs if keep is None or keep(r)]
        found = comparisons(grouped(kept, experiment, metric))
        if found:
            lines.append(f'{label}: ' + ', '.join(found))
    return lines


def plot(runs: Sequence[dict], out: Path) -> Path:
    """Per experiment, every seed's value (dots) and the mean (bar) per norm."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = [('micro, batch 1: top-1 %', 'micro', 'accuracy/top1', 'batch', 1),
              ('micro, batch 2: top-1 %', 'micro', 'accuracy/top1', 'batch', 2),
              ('fine-tuned: box AP %', 'finetune', 'coco/bbox_mAP', 'variant', 'default'),
              ('from scratch: box AP %', 'scratch', 'coco/bbox_mAP', 'variant', 'default'),
              ('toy DeepLabV3, 1 image: mIoU %', 'seg', 'mIoU', None, None),
              ('toy DeepLabV3, 16 images: mIoU %', 'seg16', 'mIoU', None, None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, experiment, metric, key, value) in zip(axes, panels):
        kept = [r for r in runs if key is None or r['setting'].get(key, 'default') == value]
        groups = grouped(kept, experiment, metric)
        for x, norm in enumerate(NORMS):
            values = groups.get(norm, [])
            if values:
                ax.bar(x, mean(values), color='C0', alpha=0.35)
                ax.plot([x] * len(values), values, 'o', color='C0', markersize=4)
        if experiment == 'micro':
            ax.axhline(100 / 5, color='grey', linestyle='--', linewidth=1, label='chance')
            ax.legend(fontsize='small', loc='upper left')
        ax.set_xticks(range(len(NORMS)), NORMS, fontsize='small')
        ax.set_title(title, fontsize='medium')
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def markdown(results: Dict[str, object]) -> str:
    """The tables, the differences beyond the seed spread and where the numbers come from."""
    runs = [r for r in results['runs'] if 'metrics' in r]
    lines = spread_lines(runs)
    sessions = results.get('sessions', [])
    wall = sum(session.get('wall_s', 0.0) for session in sessions)
    cpu = sum(run['wall_s'] for run in runs)
    source = (f'{len(runs)} runs, {cpu / 60:.0f} min of single-thread run time, '
              f'{wall / 60:.0f} min wall' + (
                  f' with {sessions[-1]["workers"]} runs at a time (commit '
                  f'`{sessions[-1]["revision"]}`)' if sessions else ''))
    return '\n'.join([
        tables(runs),
        'Differences larger than the seed spread (|Δ mean| > std₁ + std₂): ' +
        ('; '.join(lines) if lines else 'none') + '.', '',
        f'From `projects/toy/results/toy_study.json` ({source}).', ''])


def seg_markdown(results: Dict[str, object]) -> str:
    """The toy segmentation's tables (1 and 16 images per step), their differences beyond the
    seed spread, the 16-against-1 table and their run time."""
    runs = [r for r in results['runs'] if r['experiment'] in SEG_EXPERIMENTS and 'metrics' in r]
    lines: List[str] = []
    for experiment in SEG_EXPERIMENTS:
        table = seg_table(runs, experiment)
        if not table:
            continue
        found = comparisons(grouped(runs, experiment, 'mIoU'))
        lines += table + [
            'Differences in mIoU larger than the seed spread (|Δ mean| > std₁ + std₂): ' +
            (', '.join(found) if found else 'none') + '.', '']
    cpu = sum(run['wall_s'] for run in runs)
    return '\n'.join(lines + batch_table(runs) + [
        f'From `projects/toy/results/toy_study.json` ({len(runs)} runs, {cpu / 60:.0f} min of '
        'single-thread run time).', ''])


def report(results: Dict[str, object], png: Path) -> str:
    """:func:`markdown` and :func:`seg_markdown`, and the plot drawn to ``png``."""
    if any('metrics' in run for run in results['runs']):
        plot([r for r in results['runs'] if 'metrics' in r], png)
    return markdown(results) + '\n' + seg_markdown(results)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workers', type=int, default=2, help='runs at a time')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per run')
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--det-iters', type=int, default=DET_ITERS,
                        help='training steps of every detector run')
    parser.add_argument('--experiments', nargs='+', choices=sorted(METRICS),
                        default=sorted(METRICS), help='run only these experiments')
    parser.add_argument('--norms', nargs='+', choices=NORMS, default=list(NORMS),
                        help='run only these norms')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='appended to every run\'s options (e.g. a smoke run: '
                        'train_cfg.max_iters=2 train_cfg.val_interval=2)')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'toy_study.json')
    parser.add_argument('--plot', type=Path, default=RESULTS_DIR / 'toy_study.png')
    parser.add_argument('--work-root', default='work_dirs/toy_study')
    parser.add_argument('--readme', type=Path,
                        help='write the tables into this README between its markers')
    parser.add_argument('--report', action='store_true',
                        help='only print the tables and draw the plot of the results so far')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.report:
        results = load_results(args.out)
    else:
        cells = [c for c in study_cells(args.seeds, args.work_root, args.det_iters)
                 if c.experiment in args.experiments and c.norm in args.norms]
        for cell in cells:
            cell.options += args.cfg_options
        results = run_study(cells, args.out, args.work_root, args.workers, args.threads)
    print(report(results, args.plot))
    if args.readme is not None:
        text = replace_block(args.readme.read_text(), TOY_BEGIN, TOY_END, markdown(results))
        args.readme.write_text(replace_block(text, SEG_BEGIN, SEG_END, seg_markdown(results)))
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
