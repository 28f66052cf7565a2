"""Loss and evaluation curves of a training run, drawn from its work dir (``tools/plot_curves.py``).

Reads the training losses from MMEngine's ``<work_dir>/<timestamp>/vis_data/scalars.json``
(all runs of the work dir, in time order, so a resumed run continues its curve) and the
evaluation metrics from ``<work_dir>/metrics.json`` (written by
:class:`mmws.hooks.metrics_file.MetricsFileHook`), both against the training iteration.
"""
import argparse
import glob
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

DEFAULT_METRICS = ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'mIoU')

Curve = Tuple[List[float], List[float]]


def read_losses(work_dir: str) -> Dict[str, Curve]:
    """``{loss name: (iterations, values)}`` of every training log line of the work dir.

    Where a resumed run logs an iteration again, the later run's value wins.
    """
    by_iter: Dict[int, dict] = {}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record and 'iter' in record:
                    by_iter[int(record['iter'])] = record
    curves: Dict[str, Curve] = {}
    for iteration in sorted(by_iter):
        for key, value in by_iter[iteration].items():
            if key == 'loss' or key.startswith('loss_'):
                xs, ys = curves.setdefault(key, ([], []))
                xs.append(iteration)
                ys.append(float(value))
    return curves


def read_metrics(work_dir: str, names: Sequence[str]) -> Dict[str, Curve]:
    """``{metric: (iterations, values)}`` of the validations in ``metrics.json``."""
    path = osp.join(work_dir, 'metrics.json')
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        records = [r for r in json.load(f) if r.get('mode') == 'val']
    curves: Dict[str, Curve] = {}
    for record in records:
        for name in names:
            if name in record:
                xs, ys = curves.setdefault(name, ([], []))
                xs.append(record['iter'])
                ys.append(record[name])
    return curves


def plot_curves(work_dir: str, out: Optional[str] = None,
                metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Draw the losses (left) and the metrics (right) of a work dir to a PNG; returns its path.

    Raises:
        FileNotFoundError: The work dir has no training log.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    losses = read_losses(work_dir)
    if not losses:
        raise FileNotFoundError(f'no training losses under {work_dir!r} '
                                f'(expected */vis_data/scalars.json)')
    evaluations = read_metrics(work_dir, metrics)
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, (xs, ys) in losses.items():
        loss_ax.plot(xs, ys, label=name, linewidth=2.0 if name == 'loss' else 1.0)
    loss_ax.set(xlabel='iteration', ylabel='loss', title='training losses')
    loss_ax.legend(fontsize='small')
    for name, (xs, ys) in evaluations.items():
        metric_ax.plot(xs, ys, marker='o', label=name)
    metric_ax.set(xlabel='iteration', ylabel='metric', title='validation')
    if evaluations:
        metric_ax.legend(fontsize='small')
    fig.suptitle(osp.basename(osp.normpath(work_dir)))
    fig.tight_layout()
    out = out or osp.join(work_dir, 'curves.png')
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description='Plot the loss and metric curves of a run')
    parser.add_argument('work_dir', help='the --work-dir of tools/train.py')
    parser.add_argument('--out', help='PNG path (default: <work_dir>/curves.png)')
    parser.add_argument('--metrics', nargs='+', default=list(DEFAULT_METRICS),
                        help='metric keys of metrics.json to draw (those present are drawn)')
    args = parser.parse_args(argv)
    out = plot_curves(args.work_dir, args.out, args.metrics)
    print(f'wrote {out}')
    return out
