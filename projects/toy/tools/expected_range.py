"""The range `make train-toy` lands in, and where a run falls in it.

    python projects/toy/tools/expected_range.py WORK_DIR       # compare a run with the range
    python projects/toy/tools/expected_range.py --measure [--seeds 0 1 2 3] [--readme README.md]

The main job's AP moves with the draw of its pretraining (the seed, and the CPU and thread count
through the floating-point sums) more than with the fine-tuning seed. ``--measure`` pretrains the
BCN+WS classifier with each seed and fine-tunes the toy Mask R-CNN from it exactly as
``make train-toy`` does (fine-tuning seed 0, default threads), one run at a time, recording each
run in ``results/train_toy_range.json`` as it finishes (rerunning skips recorded runs). Without
``--measure`` it reads WORK_DIR's ``metrics.json`` and prints the final AP beside that range.
"""
import argparse
import json
import os.path as osp
import sys
from pathlib import Path
from statistics import mean, stdev
from typing import Dict, List, Optional, Sequence

from toy_study import (Cell, backbone_path, load_results, markdown_table, replace_block,
                       run_study)

RANGE_FILE = Path(__file__).resolve().parents[1] / 'results' / 'train_toy_range.json'
PRETRAIN = 'projects/toy/configs/resnet18_bcn-ws_1xb32-toy_cls.py'
FINETUNE = 'projects/toy/configs/mask-rcnn_r18-toypre_fpn_bcn-ws_1xb1-toy_coco.py'
METRICS = {'box AP': 'coco/bbox_mAP', 'mask AP': 'coco/segm_mAP'}
BEGIN = '<!-- train-toy range: rendered by tools/expected_range.py --measure -->'
END = '<!-- end of train-toy range -->'


def range_cells(seeds: Sequence[int], work_root: str, threads: int) -> List[Cell]:
    """A pretraining per seed, each followed by the main job's fine-tuning from it, at
    ``threads`` torch threads (a draw of its own: the sums change with the thread count)."""
    cells = []
    for seed in seeds:
        setting = {'pretraining seed': seed, 'threads': threads}
        work = osp.join(work_root, f'threads{threads}')
        pretrain = Cell(f'pretrain_bcn-ws_seed{seed}_threads{threads}', 'pretrain', 'BCN+WS',
                        seed, setting, PRETRAIN)
        cells += [pretrain,
                  Cell(f'train-toy_pretraining-seed{seed}_threads{threads}', 'finetune',
                       'BCN+WS', 0, setting, FINETUNE,
                       [f'model.backbone.init_cfg.checkpoint='
                        f'{backbone_path(work, "BCN+WS", seed)}'], pretrain.name)]
    return cells


def finetuned_ap(results: Dict[str, object]) -> Dict[str, Dict[str, float]]:
    """``{'seed S, T thread(s)': {'box AP': %, 'mask AP': %}}`` of the recorded fine-tunings."""
    return {f'{run["setting"]["pretraining seed"]}, {run["setting"].get("threads", 1)} thread(s)':
            {label: 100 * run['metrics'][key] for label, key in METRICS.items()}
            for run in results['runs'] if run['experiment'] == 'finetune' and 'metrics' in run}


def range_markdown(results: Dict[str, object]) -> str:
    """One row per pretraining seed, then the range and mean ± std of each metric."""
    ap = finetuned_ap(results)
    if not ap:
        return 'No run recorded yet.'
    rows = [[str(seed)] + [f'{ap[seed][label]:.1f}' for label in METRICS] for seed in sorted(ap)]
    for label, summary in (('range', lambda v: f'{min(v):.1f}–{max(v):.1f}'),
                           ('mean ± std', lambda v: f'{mean(v):.1f} ± '
                                                    f'{stdev(v) if len(v) > 1 else 0:.1f}')):
        rows.append([label] + [summary([a[m] for a in ap.values()]) for m in METRICS])
    return markdown_table(['pretraining seed, torch threads'] + list(METRICS), rows) + (
        f'\n\nFrom `results/train_toy_range.json` ({len(ap)} fine-tunings, fine-tuning seed 0).')


def compare(work_dir: str, results: Dict[str, object]) -> str:
    """The final AP of the run in ``work_dir`` beside the measured range."""
    with open(osp.join(work_dir, 'metrics.json')) as f:
        last = [m for m in json.load(f) if METRICS['box AP'] in m][-1]
    ap = finetuned_ap(results)
    lines = []
    for label, key in METRICS.items():
        values = [a[label] for a in ap.values()]
        value = 100 * last[key]
        where = ('inside' if min(values) <= value <= max(values) else
                 'below' if value < min(values) else 'above')
        lines.append(f'{label} {value:.1f}: {where} the expected range {min(values):.1f}–'
                     f'{max(values):.1f} ({len(values)} pretraining draws, mean '
                     f'{mean(values):.1f})')
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', nargs='?', help='a `make train-toy` work dir to compare')
    parser.add_argument('--measure', action='store_true', help='measure the range')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3])
    parser.add_argument('--threads', type=int, default=2, help='torch threads (make: all cores)')
    parser.add_argument('--work-root', default='work_dirs/train_toy_range')
    parser.add_argument('--out', type=Path, default=RANGE_FILE)
    parser.add_argument('--readme', type=Path, help='write the table between its markers')
    args = parser.parse_args(argv)
    if not args.measure and args.work_dir is None:
        parser.error('give a WORK_DIR to compare, or --measure')
    return args


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    if args.measure:
        work_root = osp.join(args.work_root, f'threads{args.threads}')
        results = run_study(range_cells(args.seeds, args.work_root, args.threads), args.out,
                            work_root, workers=1, threads=args.threads)
        text = range_markdown(results)
        if args.readme is not None:
            args.readme.write_text(replace_block(args.readme.read_text(), BEGIN, END, text))
    else:
        text = compare(args.work_dir, load_results(args.out))
    print(text)
    return text


if __name__ == '__main__':
    main(sys.argv[1:])
