"""End to end on the toy VOC data through ``tools/train.py`` / ``tools/test.py`` (their library
functions): training lowers the loss, the model learns its training images (mIoU above a floor
an untrained model cannot reach), IoUMetric reports, checkpoints resume."""
import glob
import json
import os.path as osp

import pytest
import torch

from mmws.apis import runner as tools

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
TOY_BCN_WS = osp.join(REPO, 'projects', 'toy', 'configs', 'deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py')
MAX_ITERS = 100
LR = 0.01
# mIoU on the 8 training images after MAX_ITERS AdamW steps at LR (seeds 0-2): 30.7-39.3.
# Predicting background everywhere (the class prior, which the model learns first: at lr 0.002 it
# has learned only that after 100 steps) gives 18.1; the same run at lr 0 (an untrained model)
# gives 9.3.
MIOU_FLOOR = 25.0

# The toy BCN+WS config on a smaller toy dataset (64x64 images) in a temp dir, evaluated on its
# training images, at a higher lr than the toy run's (its 5e-4 learns nothing measurable in 100
# steps here).
CONFIG = """
_base_ = {base!r}
data = dict(data_root={root!r}, spec=dict(num_train=8, num_val=4, size=(64, 64)))
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=data)
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data, ann_file='ImageSets/Segmentation/train.txt'))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr={lr}))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, by_epoch=False,
                        begin=0, end={iters})]
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={interval}))
randomness = dict(seed=0)
"""


def _train_records(work_dir):
    """Training log records (one per iteration) of all runs in ``work_dir``, in order.

    In one process MMEngine reuses the first runner's visualizer, so a resumed run may log
    into the first run's ``scalars.json``: read them all.
    """
    records = []
    for path in sorted(glob.glob(osp.join(work_dir, '2*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            records += [r for r in map(json.loads, f) if 'loss' in r]
    return records


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('seg_e2e')
    config = tmp / 'toy_voc_small.py'
    config.write_text(CONFIG.format(base=TOY_BCN_WS, root=str(tmp / 'toy_voc'), iters=MAX_ITERS,
                                    interval=MAX_ITERS // 2, lr=LR))
    work_dir = str(tmp / 'work')
    torch.manual_seed(0)
    runner = tools.train([str(config), '--work-dir', work_dir])
    return str(config), work_dir, runner


def test_training_lowers_the_loss_and_reports_iou_metrics(trained):
    _, work_dir, runner = trained
    records = _train_records(work_dir)
    assert [r['step'] for r in records] == list(range(1, MAX_ITERS + 1))
    losses = [r['loss'] for r in records]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    with open(osp.join(work_dir, 'metrics.json')) as f:
        (metrics, ) = json.load(f)
    assert metrics['iter'] == MAX_ITERS
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(metrics)
    assert 0 < metrics['aAcc'] <= 100 and 0 <= metrics['mIoU'] <= 100
    assert osp.isfile(osp.join(work_dir, f'iter_{MAX_ITERS // 2}.pth'))
    assert osp.isfile(osp.join(work_dir, f'iter_{MAX_ITERS}.pth'))


def test_the_model_learns_its_training_images(trained):
    with open(osp.join(trained[1], 'metrics.json')) as f:
        (metrics, ) = json.load(f)
    assert metrics['mIoU'] >= MIOU_FLOOR, metrics


def test_resume_continues_from_the_checkpoint(trained):
    config, work_dir, _ = trained
    resume_at = MAX_ITERS // 2
    checkpoint = osp.join(work_dir, f'iter_{resume_at}.pth')
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == resume_at and saved['optimizer']['state']
    runner = tools.train([config, '--work-dir', work_dir, '--resume', checkpoint,
                    '--cfg-options', f'train_cfg.max_iters={resume_at + 2}'])
    records = _train_records(work_dir)
    first, resumed = records[:MAX_ITERS], records[MAX_ITERS:]
    assert [r['step'] for r in resumed] == [resume_at + 1, resume_at + 2]
    # The poly schedule continues where it stopped (its state came back with the checkpoint).
    assert [r['lr'] for r in resumed] == [r['lr'] for r in first[resume_at:resume_at + 2]]
    # The BCN estimates came back too: their step count continues from the checkpoint's.
    pool_norm = runner.model.decode_head.image_pool[1].norm
    assert int(saved['state_dict']['decode_head.image_pool.1.bcn.num_batches_tracked']) == \
        resume_at
    assert int(pool_norm.num_batches_tracked) == resume_at + 2


def test_test_tool_evaluates_a_checkpoint(trained, tmp_path):
    config, work_dir, _ = trained
    metrics = tools.test([config, osp.join(work_dir, f'iter_{MAX_ITERS}.pth'), '--work-dir',
                    str(tmp_path)])
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(metrics)
    with open(osp.join(work_dir, 'metrics.json')) as f:
        trained_metrics = json.load(f)[0]
    assert metrics['mIoU'] == pytest.approx(trained_metrics['mIoU'])
