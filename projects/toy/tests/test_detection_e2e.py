"""End to end on the toy COCO data: train, evaluate, checkpoint, resume, test; a 2-process
DDP launch through tools/dist_train.sh.

The toy BCN+WS config runs at test size: 96 px images, 4 training images, a constant lr, and
every detection kept for evaluation. The evaluation runs on the training images: in 24 steps
the model learns them well enough that its AP clears a floor an untrained model cannot reach.
"""
import copy
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from toy_coco_config import toy_coco_header

from mmws import BCN
from mmws.checkpoint import safe_loading
from mmws.apis import runner as tool

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
TOY_BCN = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')
ESTIMATES = ('running_mean', 'running_var', 'num_batches_tracked')
ITERS = 24
INTERVAL = 8  # evaluation and checkpoint interval
# AP on the 4 training images after ITERS steps (3 seeds): trained 0.27-0.36 box, 0.21-0.26
# mask; the same run at lr 0 (an untrained model) <= 0.002 box, 0.000 mask.
BBOX_AP_FLOOR = 0.1
SEGM_AP_FLOOR = 0.05

TEST_CONFIG = """
train_dataloader = dict(
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(data_root=data_root, spec=spec, pipeline=train_pipeline))
# Evaluate on the training images (see the module docstring).
val_dataloader = dict(
    dataset=dict(data_root=data_root, spec=spec, pipeline=test_pipeline,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_train.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters={iters}, val_interval={interval})
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=0.01))
# Keep every detection, so the evaluation of an early model has something to score.
model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={interval}))
randomness = dict(seed=0)
"""


def write_config(tmp_path, iters, name='toy_test.py', extra=''):
    path = tmp_path / name
    path.write_text(toy_coco_header(TOY_BCN, tmp_path / 'toy_coco') +
                    TEST_CONFIG.format(iters=iters, interval=INTERVAL) + extra)
    return str(path)


def bcn_state(model):
    return {f'{name}.{key}': getattr(module, key).clone()
            for name, module in model.named_modules() if isinstance(module, BCN)
            for key in ESTIMATES}


class CaptureAtStart(Hook):
    """Records the model's BCN estimates and the optimizer state when training starts."""

    def before_train(self, runner):
        self.iter = runner.iter
        self.estimates = bcn_state(runner.model)
        self.optimizer = copy.deepcopy(runner.optim_wrapper.state_dict())  # live tensors


def losses_of(work_dir):
    [path] = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line)['loss'] for line in f if '"loss"' in line]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('toy_e2e')
    work_dir = str(tmp_path / 'work')
    runner = tool.train([write_config(tmp_path, iters=ITERS), '--work-dir', work_dir])
    return tmp_path, work_dir, runner


def test_loss_falls(trained):
    losses = losses_of(trained[1])
    assert len(losses) == ITERS
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses


def test_evaluation_writes_coco_bbox_and_segm_ap(trained):
    with open(osp.join(trained[1], 'metrics.json')) as f:
        records = json.load(f)
    assert [(r['mode'], r['iter']) for r in records] == [
        ('val', i) for i in range(INTERVAL, ITERS + 1, INTERVAL)]
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert all(0.0 <= r[key] <= 1.0 for r in records), key


def test_the_model_learns_its_training_images(trained):
    with open(osp.join(trained[1], 'metrics.json')) as f:
        last = json.load(f)[-1]
    assert last['coco/bbox_mAP'] >= BBOX_AP_FLOOR, last
    assert last['coco/segm_mAP'] >= SEGM_AP_FLOOR, last


def test_checkpoints_hold_the_bcn_estimates(trained):
    _, work_dir, runner = trained
    checkpoint = torch.load(osp.join(work_dir, f'iter_{ITERS}.pth'), map_location='cpu',
                            weights_only=False)
    estimates = bcn_state(runner.model)
    assert estimates and all(int(v) == ITERS for k, v in estimates.items()
                             if k.endswith('num_batches_tracked'))
    for key, value in estimates.items():
        assert torch.equal(checkpoint['state_dict'][key], value), key


def test_resume_restores_estimates_and_optimizer_and_continues(trained):
    tmp_path, work_dir, _ = trained
    resumed_dir = str(tmp_path / 'resumed')
    resume_at = ITERS - INTERVAL
    checkpoint = osp.join(work_dir, f'iter_{resume_at}.pth')
    args = tool.parse_train_args([write_config(tmp_path, ITERS, 'resume.py'), '--work-dir',
                                  resumed_dir, '--resume', checkpoint])
    cfg = tool.apply_train_args(tool.load_config(args), args)
    tool.prepare_environment(cfg, args)
    runner = tool.build_runner(cfg)
    capture = CaptureAtStart()
    runner.register_hook(capture)
    with safe_loading():  # what tool.train does around the runner
        runner.train()

    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert capture.iter == resume_at
    for key, value in capture.estimates.items():
        assert torch.equal(saved['state_dict'][key], value), key
    saved_state = saved['optimizer']['state']
    assert saved_state and saved_state.keys() == capture.optimizer['state'].keys()
    for index, state in saved_state.items():
        assert torch.equal(state['momentum_buffer'],
                           capture.optimizer['state'][index]['momentum_buffer'])
    # It continues from there: the last INTERVAL steps, counted on the restored estimates.
    assert runner.iter == ITERS and osp.isfile(osp.join(resumed_dir, f'iter_{ITERS}.pth'))
    assert all(int(v) == ITERS for k, v in bcn_state(runner.model).items()
               if k.endswith('num_batches_tracked'))


def test_test_tool_evaluates_a_checkpoint_and_dumps_predictions(trained):
    tmp_path, work_dir, _ = trained
    out = str(tmp_path / 'predictions.pkl')
    metrics = tool.test([write_config(tmp_path, ITERS), osp.join(work_dir, f'iter_{ITERS}.pth'),
                         '--work-dir', str(tmp_path / 'test'), '--out', out])
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= metrics.keys()
    assert osp.getsize(out) > 0
    with open(tmp_path / 'test' / 'metrics.json') as f:
        [record] = json.load(f)
    assert record['mode'] == 'test' and record['coco/bbox_mAP'] == metrics['coco/bbox_mAP']


@HOOKS.register_module(force=True)
class DumpBCNEstimatesHook(Hook):
    """Saves this rank's BCN estimates after training (imported by the DDP run's config)."""

    def after_train(self, runner):
        rank = torch.distributed.get_rank()
        model = runner.model.module  # the DDP wrapper's model: checkpoint key names
        torch.save(bcn_state(model), osp.join(runner.work_dir, f'rank{rank}.pt'))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_gloo_launch_keeps_estimates_equal_across_ranks(tmp_path):
    config = write_config(
        tmp_path, iters=2, extra="custom_imports = dict(imports=['mmws', 'test_detection_e2e'])\n"
        "custom_hooks = [dict(type='DumpBCNEstimatesHook')]\n")
    work_dir = str(tmp_path / 'ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1',
               # this module (the hook below) and the tests' shared helpers it imports
               PYTHONPATH=os.pathsep.join([REPO, osp.dirname(osp.abspath(__file__)),
                                           osp.join(REPO, 'tests'),
                                           os.environ.get('PYTHONPATH', '')]))
    env.update(PYTHON=sys.executable, PORT=str(free_port()))
    command = ['bash', osp.join(REPO, 'tools/dist_train.sh'), config, '2', '--work-dir', work_dir,
               '--cfg-options', 'env_cfg.dist_cfg.backend=gloo']
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(osp.join(work_dir, f'rank{r}.pt')) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # 2 steps, each averaging the statistics of both ranks' images.
    assert all(int(v) == 2 for k, v in ranks[0].items() if k.endswith('num_batches_tracked'))
    checkpoint = torch.load(osp.join(work_dir, 'iter_2.pth'), weights_only=False)
    for key, value in ranks[0].items():
        assert torch.equal(checkpoint['state_dict'][key], value), key
