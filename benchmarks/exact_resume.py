"""Is a resumed toy run the uninterrupted one? Before and after ``mmws.RandomStateHook``.

The toy DeepLabV3 (BCN+WS, dropout in its heads, random flips in a data-loader worker) trained
30 steps and resumed at step 15, and the toy Mask R-CNN (BCN+WS, random flips in the main
process, RoI sampling) trained 40 steps and resumed at step 20, each through ``tools/train.py``
in its own process, as the shipped configs are (with ``randomness.seed=0``, validation at the
end only). Each pair (uninterrupted, resumed) runs twice: with the configs' hooks ("after") and
with ``custom_hooks=[]`` ("before": MMEngine alone). Prints the losses logged every 5 steps after
the resume point and the final metrics; writes ``benchmarks/results/exact_resume.json``.

    .venv/bin/python benchmarks/exact_resume.py

About 10 minutes on 2 busy CPU cores (the toy data is written on first use).
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# name: (config, steps, resume step, metrics to show, options of the model)
MODELS = {
    'deeplabv3': ('projects/toy/configs/deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py', 30, 15,
                  ('mIoU', 'aAcc'), []),
    # Every detection kept: after 40 steps none clears the default score threshold of 0.05.
    'mask_rcnn': ('projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py', 40, 20,
                  ('coco/bbox_mAP', 'coco/segm_mAP'), ['model.test_cfg.rcnn.score_thr=0.0']),
}
LOG_INTERVAL = 5


def train(config: str, work_dir: str, iters: int, resume_at: int, model_options: List[str],
          hooks: bool, resume_from: Optional[str] = None) -> dict:
    """One ``tools/train.py`` run; returns its logged losses by step and its final metrics."""
    options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
               f'default_hooks.checkpoint.interval={resume_at}',
               f'default_hooks.logger.interval={LOG_INTERVAL}', 'randomness.seed=0',
               *model_options]
    if not hooks:
        options.append('custom_hooks=[]')
    resume = ['--resume', resume_from] if resume_from else []
    command = [sys.executable, osp.join(REPO, 'tools/train.py'), osp.join(REPO, config),
               '--work-dir', work_dir, *resume, '--cfg-options', *options]
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    losses = {}
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')):
        with open(path) as f:
            for record in map(json.loads, f):
                if 'loss' in record:
                    losses[record['step']] = record['loss']
    with open(osp.join(work_dir, 'metrics.json')) as f:
        metrics = json.load(f)[-1]
    return dict(losses=losses, metrics=metrics)


def main() -> Dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, (config, iters, resume_at, keys, model_options) in MODELS.items():
            for hooks in (False, True):
                name = f'{model}_{"after" if hooks else "before"}'
                full_dir = osp.join(tmp, f'{name}_full')
                full = train(config, full_dir, iters, resume_at, model_options, hooks)
                resumed = train(config, osp.join(tmp, name), iters, resume_at, model_options,
                                hooks, osp.join(full_dir, f'iter_{resume_at}.pth'))
                steps: List[int] = sorted(s for s in resumed['losses'] if s > resume_at)
                results[name] = dict(
                    steps=steps,
                    uninterrupted=[full['losses'][s] for s in steps],
                    resumed=[resumed['losses'][s] for s in steps],
                    metrics={key: [full['metrics'][key], resumed['metrics'][key]]
                             for key in keys})
                row = results[name]
                print(f'{name}: losses at {steps}: uninterrupted {row["uninterrupted"]}, '
                      f'resumed {row["resumed"]}; metrics (uninterrupted, resumed) '
                      f'{row["metrics"]}', flush=True)
    os.makedirs(osp.join(REPO, 'benchmarks', 'results'), exist_ok=True)
    with open(osp.join(REPO, 'benchmarks', 'results', 'exact_resume.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()
