"""Pretrain a detector backbone on the toy classification data (``projects/toy/tools/pretrain_toy_backbone.py``).

:func:`pretrain_backbone` trains an :class:`~mmws_toy.classifier.ImageClassifier` config
through the project's runner and writes a weights-only checkpoint of its backbone:
``{'state_dict': {'backbone.<key>': tensor}, 'meta': {...}}``. A detector loads it with
``init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=PATH)`` on its backbone; the
BCN estimates (``running_mean``, ``running_var``, ``num_batches_tracked``) travel with it.
"""
import argparse
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from mmws.apis.runner import train

PREFIX = 'backbone.'


def backbone_state(model: nn.Module, prefix: str = PREFIX) -> Dict[str, torch.Tensor]:
    """The entries of ``model``'s state dict under ``prefix`` (the key keeps the prefix)."""
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()
             if key.startswith(prefix)}
    if not state:
        raise ValueError(f'the model has no state-dict entry under {prefix!r}')
    return state


def save_backbone(model: nn.Module, out: str, meta: Optional[dict] = None) -> str:
    """Write ``{'state_dict': backbone_state(model), 'meta': meta}`` to ``out`` atomically (a
    concurrent reader sees the old file or the complete new one). Returns ``out``."""
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    partial = f'{out}.{os.getpid()}.partial'
    torch.save(dict(state_dict=backbone_state(model), meta=meta or {}), partial)
    os.replace(partial, out)
    return out


def default_paths(config: str) -> Dict[str, str]:
    """``out`` (``checkpoints/toy/<config name>.pth``) and ``work_dir``
    (``work_dirs/<config name>``) of a pretraining config."""
    name = osp.splitext(osp.basename(config))[0]
    return dict(out=osp.join('checkpoints', 'toy', f'{name}.pth'),
                work_dir=osp.join('work_dirs', name))


def last_metrics(work_dir: str) -> dict:
    """The last evaluation record of a run's ``metrics.json`` (empty if there is none)."""
    path = osp.join(work_dir, 'metrics.json')
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        records = json.load(f)
    return records[-1] if records else {}


def pretrain_backbone(config: str,
                      out: Optional[str] = None,
                      work_dir: Optional[str] = None,
                      seed: int = 0,
                      cfg_options: Sequence[str] = (),
                      force: bool = False) -> str:
    """Train the classifier of ``config`` and save its backbone to ``out``, unless ``out``
    already exists (the pretrained backbone is a cache: ``force`` retrains).

    Args:
        config: An ``ImageClassifier`` config
            (e.g. ``projects/toy/configs/resnet18_bcn-ws_1xb32-toy_cls.py``).
        out: Checkpoint to write (default: :func:`default_paths`).
        work_dir: The training run's work dir (default: :func:`default_paths`).
        seed: MMEngine's ``randomness.seed``.
        cfg_options: More ``key=value`` overrides, as ``tools/train.py --cfg-options``.
        force: Retrain even if ``out`` exists.

    Returns:
        ``out``.
    """
    paths = default_paths(config)
    out = out or paths['out']
    work_dir = work_dir or paths['work_dir']
    if osp.isfile(out) and not force:
        return out
    argv: List[str] = [config, '--work-dir', work_dir, '--cfg-options',
                       f'randomness.seed={seed}', *cfg_options]
    runner = train(argv)
    meta = dict(config=osp.basename(config), seed=seed, iters=runner.iter,
                metrics={key: value for key, value in last_metrics(work_dir).items()
                         if key.startswith('accuracy/')})
    return save_backbone(runner.model, out, meta)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Pretrain a toy backbone (classifier config) and save its backbone weights')
    parser.add_argument('config', help='classifier config, e.g. '
                        'projects/toy/configs/resnet18_bcn-ws_1xb32-toy_cls.py')
    parser.add_argument('--out', help='backbone checkpoint (default: '
                        'checkpoints/toy/<config name>.pth)')
    parser.add_argument('--work-dir', help='training work dir (default: work_dirs/<config name>)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='retrain if --out exists')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override settings of the config (tools/train.py syntax)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    out = args.out or default_paths(args.config)['out']
    cached = osp.isfile(out) and not args.force
    pretrain_backbone(args.config, out, args.work_dir, args.seed, args.cfg_options, args.force)
    print(f'{"cached" if cached else "wrote"} pretrained backbone: {out}')
    return out
