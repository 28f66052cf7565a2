"""Exact resume with ``mmws.RandomStateHook``: the random states round-trip through a
weights-only load, every shipped config carries the hook, and the toy DeepLabV3 (dropout,
random flips in a data-loader worker) and the toy Mask R-CNN (random flips in the main process,
RoI sampling, a validation at the checkpoint's iteration), interrupted and resumed through
``tools/train.py --resume``, reproduce the uninterrupted run bit for bit; without the hook they
do not."""
import glob
import os.path as osp
import random
from types import SimpleNamespace

import mmengine.config.config as mmengine_config
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop
from toy_coco_config import toy_coco_header
from torch.utils.data import DataLoader

from mmws.hooks import RandomStateHook
from mmws.hooks.random_state import (CHECKPOINT_KEY, capture_random_state,
                                     restore_random_state)
from mmws.apis import runner as tools

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
HOOK = 'mmws.RandomStateHook'
ITERS = 8
RESUME_AT = 4  # checkpoint and validation interval


def draws() -> list:
    """A few numbers from each generator the hook saves (CPU)."""
    return [random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(),
            torch.rand(3).tolist(), torch.randperm(10).tolist()]


def test_states_round_trip_through_a_weights_only_load(tmp_path):
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's generator
    np.random.randn()  # and one in NumPy's
    state = capture_random_state()
    expected = draws()
    torch.save(state, tmp_path / 'state.pth')
    loaded = torch.load(tmp_path / 'state.pth', weights_only=True)  # no allowlist
    draws()
    assert restore_random_state(loaded) == []
    assert draws() == expected


# ---- every shipped config ------------------------------------------------------------------

def not_a_model_config(package_path: str, cfg_file: str) -> str:
    raise ValueError(f'{cfg_file} is a base config')


CONFIGS = sorted(path for root in ('configs', 'projects/toy/configs')
                 for path in glob.glob(osp.join(REPO, root, '**', '*.py'), recursive=True)
                 if '_base_' not in path)


def test_every_shipped_config_carries_the_hook_once(monkeypatch):
    # To find an `mmdet::`/`mmseg::` base, MMEngine first reads every metafile of the toolbox
    # (about 0.6 s per base here) looking for a model config of that name, and on failing takes
    # the path under the toolbox's configs; all of ours are `_base_/` files: go there directly.
    monkeypatch.setattr(mmengine_config, '_get_external_cfg_path', not_a_model_config)
    assert {osp.basename(osp.dirname(path)) for path in CONFIGS} == {
        'deeplabv3', 'faster_rcnn', 'mask_rcnn', 'configs'}  # configs: projects/toy/configs
    for path in CONFIGS:
        hooks = [hook['type'] for hook in Config.fromfile(path).get('custom_hooks', [])]
        assert hooks.count(HOOK) == 1, (path, hooks)
        if 'precise-bcn' in path:
            assert hooks == [HOOK, 'mmws.PreciseBCNHook'], path


# ---- what the hook does with a loaded checkpoint, on a minimal runner ------------------------


class Log(list):
    """A runner's logger that keeps what is logged."""

    def info(self, message: str) -> None:
        self.append(message)

    warning = info


def fake_runner(iter_: int, sampler_seed: int) -> SimpleNamespace:
    """What the hook reads of a runner about to train, resumed (or not) at ``iter_``."""
    dataset = list(range(8))
    loader = DataLoader(dataset, sampler=DefaultSampler(dataset, seed=sampler_seed))
    loop = SimpleNamespace(dataloader_iterator=iter(loader))
    return SimpleNamespace(iter=iter_, epoch=0, train_loop=loop, train_dataloader=loader,
                           logger=Log(), hooks=[])


def saved_checkpoint(iter_: int, sampler_seed: int) -> dict:
    hook, runner = RandomStateHook(), fake_runner(iter_ - 1, sampler_seed)
    checkpoint = dict(meta=dict(epoch=0, iter=iter_, seed=sampler_seed))
    hook.before_save_checkpoint(runner, checkpoint)
    return checkpoint


def test_a_load_from_checkpoint_leaves_the_generators_alone():
    checkpoint = saved_checkpoint(iter_=4, sampler_seed=0)
    hook, runner = RandomStateHook(), fake_runner(iter_=0, sampler_seed=0)
    original = runner.train_loop.dataloader_iterator
    hook.after_load_checkpoint(runner, checkpoint)
    state = capture_random_state()
    hook.before_train(runner)
    after = draws()
    restore_random_state(state)
    assert draws() == after  # before_train set no generator
    assert runner.train_loop.dataloader_iterator is original  # nor will it at the next fetch
    assert 'is not resumed from' in ' '.join(runner.logger)


def test_a_resume_restores_right_before_the_first_new_batch_and_warns_of_another_seed():
    checkpoint = saved_checkpoint(iter_=4, sampler_seed=7)
    restore_random_state(checkpoint[CHECKPOINT_KEY]['ranks'][0])
    expected = draws()
    hook, runner = RandomStateHook(), fake_runner(iter_=4, sampler_seed=8)
    runner.train_loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)
    runner.train_loop.dataloader_iterator = original = iter(range(10))
    hook.after_load_checkpoint(runner, checkpoint)
    hook.before_train(runner)
    log = ' '.join(runner.logger)
    assert 'built with seed 8' in log and 'randomness.seed=7' in log
    # The loop's replay of the first 4 batches passes through; the 5th fetch restores first.
    assert [next(runner.train_loop.dataloader_iterator) for _ in range(4)] == [0, 1, 2, 3]
    draws()
    assert next(runner.train_loop.dataloader_iterator) == 4
    assert draws() == expected
    assert runner.train_loop.dataloader_iterator is original


def test_distributed_ranks_states_are_gathered_for_checkpoints_and_each_rank_gets_its_own(
        monkeypatch):
    """Two ranks, simulated: rank 1's states (other than this process's) are gathered at the
    iteration a CheckpointHook saves, saved by rank 0, and restored on rank 1 only."""
    import mmws.hooks.random_state as module
    torch.manual_seed(1)
    rank1 = capture_random_state()
    rank1_draws = draws()
    torch.manual_seed(0)
    monkeypatch.setattr(module, 'get_world_size', lambda: 2)
    monkeypatch.setattr(module, 'all_gather_object', lambda state: [state, rank1])
    hook, runner = RandomStateHook(), fake_runner(iter_=4, sampler_seed=0)
    runner.hooks, runner.max_iters = [CheckpointHook(interval=10, by_epoch=False)], 100
    hook.after_train_iter(runner, 4)
    assert hook._gathered is None  # no checkpoint after iteration 5
    runner.iter = 9
    hook.after_train_iter(runner, 9)
    checkpoint = dict(meta=dict(epoch=0, iter=10, seed=0))
    hook.before_save_checkpoint(runner, checkpoint)
    entry = checkpoint[CHECKPOINT_KEY]
    assert (entry['world_size'], len(entry['ranks'])) == (2, 2)

    monkeypatch.setattr(module, 'get_rank', lambda: 1)
    hook, runner = RandomStateHook(), fake_runner(iter_=10, sampler_seed=0)
    runner.train_loop = SimpleNamespace()  # not iteration-based: restored at the epoch start
    hook.after_load_checkpoint(runner, checkpoint)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert draws() == rank1_draws
    assert runner.logger == ['RandomStateHook: the random states of iteration 10 are restored']


# ---- end to end: interrupted and resumed against uninterrupted -------------------------------


@HOOKS.register_module(force=True)
class RecordRunHook(Hook):
    """Keeps every training step's losses and every validation's metrics."""

    def before_train(self, runner) -> None:
        self.losses, self.metrics = {}, {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses[runner.iter + 1] = {key: float(value) for key, value in outputs.items()}

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics[runner.iter] = dict(metrics)


SEG_CONFIG = """
_base_ = {base!r}
data = dict(data_root={root!r}, spec=dict(num_train=6, num_val=2, size=(64, 64)))
model = dict(data_preprocessor=dict(size=(64, 64)))
# One persistent worker, as the toy config: the random flips are drawn in the worker.
train_dataloader = dict(num_workers=1, persistent_workers=True, dataset=data)
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=data)
test_dataloader = val_dataloader
"""

DET_CONFIG = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
# As many images as steps: one pass, no epoch boundary (MMEngine sleeps 2 s at each).
train_dataloader = dict(dataset=dict(data_root=data_root, spec=spec, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, spec=spec, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=0.01))
model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))
"""

COMMON = """
train_cfg = dict(max_iters={iters}, val_interval={interval})
default_hooks = dict(logger=dict(interval={interval}), checkpoint=dict(interval={interval}))
randomness = dict(seed=0)
custom_imports = dict(imports=['mmws', 'test_exact_resume'])
custom_hooks = {hooks}
"""


def write_config(tmp_path, model: str, hooks: list) -> str:
    if model == 'deeplabv3':
        base = osp.join(REPO, 'projects/toy/configs/deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py')
        text = SEG_CONFIG.format(base=base, root=str(tmp_path / 'toy_voc'))
    else:
        base = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')
        text = toy_coco_header(base, tmp_path / 'toy_coco', num_train=ITERS, num_val=2) + DET_CONFIG
    path = tmp_path / f'{model}_{len(hooks)}.py'
    path.write_text(text + COMMON.format(iters=ITERS, interval=RESUME_AT, hooks=hooks))
    return str(path)


def train(config: str, work_dir: str, *args: str):
    runner = tools.train([config, '--work-dir', work_dir, *args])
    [record] = [hook for hook in runner.hooks if isinstance(hook, RecordRunHook)]
    return record, runner.model.state_dict()


@pytest.fixture(scope='module', params=['deeplabv3', 'mask_rcnn'])
def runs(request, tmp_path_factory):
    """The uninterrupted run, its resume from iteration RESUME_AT with the hook, and the same
    resume without it."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with_hook = write_config(tmp_path, request.param,
                             [dict(type=HOOK), dict(type='RecordRunHook')])
    without_hook = write_config(tmp_path, request.param, [dict(type='RecordRunHook')])
    work_dir = str(tmp_path / 'full')
    full = train(with_hook, work_dir)
    checkpoint = osp.join(work_dir, f'iter_{RESUME_AT}.pth')
    resumed = train(with_hook, str(tmp_path / 'resumed'), '--resume', checkpoint)
    unprotected = train(without_hook, str(tmp_path / 'unprotected'), '--resume', checkpoint)
    return dict(full=full, resumed=resumed, unprotected=unprotected, checkpoint=checkpoint,
                tmp_path=tmp_path)


def test_the_resumed_run_is_the_uninterrupted_run(runs):
    (full, full_weights), (resumed, resumed_weights) = runs['full'], runs['resumed']
    steps = list(range(RESUME_AT + 1, ITERS + 1))
    assert sorted(resumed.losses) == steps
    assert [resumed.losses[step] for step in steps] == [full.losses[step] for step in steps]
    np.testing.assert_equal(resumed.metrics, {ITERS: full.metrics[ITERS]})  # nan == nan
    assert resumed_weights.keys() == full_weights.keys()
    for key, value in full_weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_without_the_hook_the_resumed_run_differs(runs):
    full, unprotected = runs['full'][0], runs['unprotected'][0]
    assert sorted(unprotected.losses) == list(range(RESUME_AT + 1, ITERS + 1))
    # The first resumed step already draws other numbers (dropout masks / RoI samples).
    assert unprotected.losses[RESUME_AT + 1] != full.losses[RESUME_AT + 1]


def test_the_checkpoint_entry_loads_weights_only(runs):
    checkpoint = torch.load(runs['checkpoint'], map_location='cpu', weights_only=False)
    entry = checkpoint[CHECKPOINT_KEY]
    assert (entry['iter'], entry['world_size'], len(entry['ranks'])) == (RESUME_AT, 1, 1)
    path = runs['tmp_path'] / 'entry.pth'
    torch.save(entry, path)
    loaded = torch.load(path, weights_only=True)  # no allowlist
    assert torch.equal(loaded['ranks'][0]['torch'], entry['ranks'][0]['torch'])
