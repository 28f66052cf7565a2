"""``mmws.PreciseBCNHook`` and ``mmws.BCNMomentumHook``.

The population the precise estimates are checked against: every element ``(n, *S)`` of every
input a BCN receives in the forward of a training step (``model.train()``, ``mode='loss'``)
over the sampled training images, with every BCN normalizing with the estimates it had before
the recomputation. The tests capture those inputs whole with forward hooks of their own and
take ``torch.var_mean(..., correction=0)`` per channel over their concatenation.
"""
import copy
import math
import os
import random
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import BaseModel, MMDistributedDataParallel
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, Runner
from torch import nn
from torch.utils.data import Dataset

from mmws import BCN, BCNMomentumHook, PreciseBCNHook
from mmws.checkpoint import safe_loading
from mmws.hooks import recompute_bcn_estimates
from test_frozen_stages import toy_config

ESTIMATES = ('running_mean', 'running_var', 'num_batches_tracked')


# -- a small model and dataset ----------------------------------------------------------------
class OffsetImages(Dataset):
    """Images whose channels carry large per-image offsets: a between-image spread that the
    average of per-image variances misses."""

    def __init__(self, num: int = 8, size: int = 6, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = [
            torch.randn(3, size, size, generator=gen) + 3 * torch.randn(3, 1, 1, generator=gen)
            for _ in range(num)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=self.images[index])


class TinyModel(BaseModel):
    """conv → BCN ('frozen', kept in eval by ``train()`` as mmdet's frozen stages are) →
    BatchNorm → conv → BCN → ReLU → conv → BCN → BCN with ``momentum=0``."""

    def __init__(self, batch_norm: bool = True) -> None:
        super().__init__()
        self.frozen = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BCN(8, num_groups=2))
        self.bn = nn.BatchNorm2d(8) if batch_norm else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), BCN(8, num_groups=2), nn.ReLU(),
            nn.Conv2d(8, 8, 1), BCN(8, num_groups=4))
        self.still = BCN(8, num_groups=2, momentum=0.0)
        self.momenta = []  # each training forward's BCN momenta, for the schedule tests

    def train(self, mode: bool = True) -> 'TinyModel':
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, inputs, data_samples=None, mode='tensor'):
        if mode == 'loss' and torch.is_grad_enabled():
            self.momenta.append([m.momentum for m in self.modules() if isinstance(m, BCN)])
        out = self.still(self.body(self.bn(self.frozen(inputs))))
        if mode == 'loss':
            return dict(loss=out.square().mean())
        if mode == 'predict':
            return list(out)
        return out


TRAINED = ('body.1', 'body.4')  # the BCNs whose estimates train


class CountMetric(BaseMetric):

    def process(self, data_batch, data_samples) -> None:
        self.results.append(len(data_samples))

    def compute_metrics(self, results) -> dict:
        return dict(count=sum(results))


def bcn_estimates(model: nn.Module) -> dict:
    model = getattr(model, 'module', model)
    return {f'{name}.{key}': getattr(module, key).clone()
            for name, module in model.named_modules() if isinstance(module, BCN)
            for key in ESTIMATES}


def set_random_estimates(model: nn.Module, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, BCN):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
            module.num_batches_tracked.fill_(1000)


def captured_bcn_inputs(model: nn.Module, batches) -> dict:
    """``{name: [input, ...]}`` of every BCN in the training forward, BCNs in eval mode."""
    inputs = {name: [] for name, m in model.named_modules() if isinstance(m, BCN)}
    handles = [
        module.register_forward_hook(
            lambda m, args, out, name=name: inputs[name].append(args[0].detach().clone()))
        for name, module in model.named_modules() if isinstance(module, BCN)
    ]
    model.train()
    for module in model.modules():
        if isinstance(module, BCN):
            module.eval()
    with torch.no_grad():
        for batch in batches:
            model(**model.data_preprocessor(batch, True), mode='loss')
    for handle in handles:
        handle.remove()
    return inputs


def population(inputs) -> tuple:
    """Per-channel mean and biased variance over all elements of all inputs (float64)."""
    elements = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in inputs], 1)
    var, mean = torch.var_mean(elements.double(), dim=1, correction=0)
    return mean, var


def collate(images) -> dict:
    return dict(inputs=torch.stack(images))


# -- recompute_bcn_estimates ------------------------------------------------------------------
def test_estimates_become_the_population_statistics_and_nothing_else_changes():
    torch.manual_seed(0)
    model = TinyModel()
    set_random_estimates(model)
    data = OffsetImages(num=7).images
    batches = [collate(data[:3]), collate(data[3:4]), collate(data[4:])]
    reference = captured_bcn_inputs(copy.deepcopy(model), batches)
    params = {k: v.clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.eval()

    counts = recompute_bcn_estimates(model, batches)

    assert counts == {name: 7 * 6 * 6 for name in TRAINED}
    for name in TRAINED:
        layer = model.get_submodule(name)
        mean, var = population(reference[name])
        torch.testing.assert_close(layer.running_mean, mean.float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(layer.running_var, var.float(), rtol=1e-6, atol=1e-6)
        # not the element-weighted mean of the per-batch variances (PreciseBN's average)
        within = sum(x[:, 0].numel() * x.double().var(dim=(0, 2, 3), correction=0)
                     for x in reference[name]) / counts[name]
        assert (layer.running_var.double() - within > 1e-3 * within).any()
    changed = {f'{name}.{key}' for name in TRAINED for key in ('running_mean', 'running_var')}
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]) != (key in changed), key
    for key, value in model.named_parameters():
        assert torch.equal(value, params[key]), key
    assert not any(m.training for m in model.modules())  # the training flags are restored


# -- PreciseBCNHook in a runner ---------------------------------------------------------------
class EstimateProbe(Hook):
    """Records the BCN estimates and the random states at the end of each iteration/epoch
    (its priority places it before or after the PreciseBCNHook) and before each validation."""

    def __init__(self, priority: str) -> None:
        self.priority = priority
        self.after = {}
        self.at_validation = {}
        self.random_states = {}

    def _record(self, runner, key) -> None:
        self.after[key] = bcn_estimates(runner.model)
        self.random_states[key] = (torch.get_rng_state(), np.random.get_state()[1].copy(),
                                   random.getstate())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._record(runner, ('iter', runner.iter + 1))

    def after_train_epoch(self, runner) -> None:
        self._record(runner, ('epoch', runner.epoch + 1))

    def before_val_epoch(self, runner) -> None:
        done = runner.epoch if isinstance(runner.train_loop, EpochBasedTrainLoop) else runner.iter
        self.at_validation[done] = bcn_estimates(runner.model)


def build_runner(work_dir, train_cfg, custom_hooks, model=None, resume_from=None):
    loader = dict(dataset=OffsetImages(), sampler=dict(type='DefaultSampler', shuffle=True),
                  batch_size=2, num_workers=0, collate_fn=dict(type='default_collate'))
    return Runner(
        model=model or TinyModel(),
        work_dir=str(work_dir),
        experiment_name=f'{os.path.basename(work_dir)}-{os.getpid()}-{id(custom_hooks)}',
        train_dataloader=loader,
        val_dataloader=loader,
        train_cfg=train_cfg,
        val_cfg=dict(),
        val_evaluator=Evaluator(CountMetric()),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=train_cfg.get('by_epoch', False)),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=custom_hooks,
        randomness=dict(seed=0),
        load_from=resume_from,
        resume=resume_from is not None)


@pytest.mark.parametrize('train_cfg, hook_cfg, expected', [
    (dict(by_epoch=False, max_iters=5, val_interval=2), {}, [('iter', k) for k in (2, 4, 5)]),
    (dict(by_epoch=False, max_iters=5, val_interval=2, val_begin=3), {}, [('iter', 4),
                                                                           ('iter', 5)]),
    (dict(by_epoch=False, max_iters=5, val_interval=2), dict(interval=3), [('iter', 3),
                                                                            ('iter', 5)]),
    (dict(by_epoch=True, max_epochs=2, val_interval=1), {}, [('epoch', 1), ('epoch', 2)]),
])
def test_hook_runs_before_each_validation_and_checkpoint(tmp_path, train_cfg, hook_cfg,
                                                         expected):
    before, after = EstimateProbe('HIGH'), EstimateProbe('NORMAL')
    hooks = [dict(type='mmws.PreciseBCNHook', num_samples=4, **hook_cfg), before, after]
    runner = build_runner(tmp_path, train_cfg, hooks)
    runner.train()

    ran = [key for key in before.after
           if not all(torch.equal(before.after[key][k], after.after[key][k])
                      for k in after.after[key])]
    assert ran == expected
    for key in before.after:  # the extra batches leave training's randomness alone
        for ours, theirs in zip(before.random_states[key], after.random_states[key]):
            assert (ours == theirs) if isinstance(ours, tuple) else np.array_equal(ours, theirs)
    by_epoch = train_cfg['by_epoch']
    for kind, done in ran:
        if not hook_cfg:  # the validation after it sees the new estimates
            assert all(torch.equal(after.after[(kind, done)][k], v)
                       for k, v in before.at_validation[done].items())
        if done % 2 == 0:  # and so does the checkpoint of that iteration/epoch
            name = f'epoch_{done}.pth' if by_epoch else f'iter_{done}.pth'
            state = torch.load(tmp_path / name, weights_only=False)['state_dict']
            for key, value in after.after[(kind, done)].items():
                assert torch.equal(state[key], value), key


def test_hook_estimates_on_the_toy_detector(tmp_path):
    """The toy BCN+WS Mask R-CNN, stem and layer1 frozen, after one training step: every
    trained BCN ends with the population statistics of its input over all training images (the
    hook draws each once: num_samples = the dataset size, batch 1); the frozen ones keep their
    estimates. The RoI sampler takes every proposal, so the RoI heads' inputs do not depend on
    the random state."""
    runner = Runner.from_cfg(toy_config(tmp_path, frozen_stages=1, iters=1))
    dataset = runner.train_dataloader.dataset
    states = {}

    class StateProbe(Hook):
        priority = 'HIGH'  # before the PreciseBCNHook

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            states['before'] = copy.deepcopy(runner.model.state_dict())

    runner.register_hook(PreciseBCNHook(num_samples=len(dataset)))
    runner.register_hook(StateProbe())
    runner.train()
    final = bcn_estimates(runner.model)

    model = runner.model
    model.load_state_dict(states['before'])  # the model as the hook found it
    batches = [runner.train_dataloader.collate_fn([dataset[i]]) for i in range(len(dataset))]
    reference = captured_bcn_inputs(model, batches)
    frozen = ('backbone.bcn1', 'backbone.layer1.')
    for name, inputs in reference.items():
        assert inputs, f'{name} received no input'
        if name.startswith(frozen):
            for key in ESTIMATES:
                assert torch.equal(final[f'{name}.{key}'], states['before'][f'{name}.{key}'])
            continue
        mean, var = population(inputs)
        torch.testing.assert_close(final[f'{name}.running_mean'], mean.float(), rtol=1e-5,
                                   atol=1e-6)
        torch.testing.assert_close(final[f'{name}.running_var'], var.float(), rtol=1e-5,
                                   atol=1e-6)
    heads = {name.split('.')[1] for name in reference if name.startswith('roi_head.')}
    assert heads == {'bbox_head', 'mask_head'}


# -- distributed ------------------------------------------------------------------------------
WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class SaveState(Hook):
    priority = 'HIGH'  # before the PreciseBCNHook

    def __init__(self, result_dir: str) -> None:
        self.result_dir = result_dir

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        torch.save(runner.model.module.state_dict(),
                   os.path.join(self.result_dir, f'before{dist.get_rank()}.pt'))


def _ddp_worker(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE)
    try:
        model = MMDistributedDataParallel(TinyModel(batch_norm=False), device_ids=None)
        runner = build_runner(
            os.path.join(result_dir, f'work{rank}'), dict(by_epoch=False, max_iters=1),
            [dict(type='mmws.PreciseBCNHook', num_samples=8), SaveState(result_dir)],
            model=model)
        runner.train()
        torch.save(bcn_estimates(runner.model), os.path.join(result_dir, f'after{rank}.pt'))
        # both ranks past their last collective before either tears gloo down (a rank that
        # destroys the group while its peer's last send is in flight aborts the peer)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_hook_under_ddp_counts_all_ranks_samples(tmp_path):
    """2 gloo processes, 4 images each (batch 2): both end with the population statistics of
    all 8 images, identical to the bit."""
    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    after = [torch.load(tmp_path / f'after{r}.pt') for r in range(WORLD_SIZE)]
    for key in after[0]:
        assert torch.equal(after[0][key], after[1][key]), key
    model = TinyModel(batch_norm=False)
    model.load_state_dict(torch.load(tmp_path / 'before0.pt'))
    reference = captured_bcn_inputs(model, [collate(OffsetImages().images)])
    for name in TRAINED:
        mean, var = population(reference[name])
        torch.testing.assert_close(after[0][f'{name}.running_mean'], mean.float())
        torch.testing.assert_close(after[0][f'{name}.running_var'], var.float())


# -- BCNMomentumHook --------------------------------------------------------------------------
@pytest.mark.parametrize('schedule, expected', [
    ('linear', {0: 0.3, 10: 0.3, 12: 0.26, 15: 0.2, 20: 0.1, 35: 0.1}),
    ('cosine', {0: 0.3, 10: 0.3, 12: 0.1 + 0.1 * (1 + math.cos(0.2 * math.pi)), 15: 0.2,
                20: 0.1, 35: 0.1}),
])
def test_momentum_schedule_values(schedule, expected):
    hook = BCNMomentumHook(start_momentum=0.3, end_momentum=0.1, begin=10, end=20,
                           schedule=schedule)
    for iteration, value in expected.items():
        assert hook.momentum_at(iteration) == pytest.approx(value, abs=1e-12), iteration


def test_momentum_hook_sets_every_bcn_of_a_wrapped_model_but_frozen_estimates():
    model = TinyModel()
    hook = HOOKS.build(dict(type='mmws.BCNMomentumHook', start_momentum=0.5, end_momentum=0.1,
                            end=4))
    runner = SimpleNamespace(iter=1, model=nn.DataParallel(model),
                             message_hub=MessageHub.get_instance('test-bcn-momentum'))
    hook.before_train(runner)
    hook.before_train_iter(runner, batch_idx=0)
    # frozen.1, body.1, body.4 scheduled; `still` was built with momentum=0
    assert [m.momentum for m in model.modules() if isinstance(m, BCN)] == [0.4] * 3 + [0.0]
    assert runner.message_hub.get_scalar('train/bcn_momentum').current() == 0.4


@pytest.mark.parametrize('bad', [
    dict(start_momentum=1.5), dict(end_momentum=-0.1), dict(begin=5, end=5),
    dict(schedule='step')
])
def test_momentum_hook_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        BCNMomentumHook(**dict(dict(start_momentum=0.3, end_momentum=0.1, end=10), **bad))


def test_momentum_schedule_in_training_and_after_resume(tmp_path):
    hook = dict(type='mmws.BCNMomentumHook', start_momentum=0.4, end_momentum=0.1, end=4)
    schedule = BCNMomentumHook(start_momentum=0.4, end_momentum=0.1, end=4)
    train_cfg = dict(by_epoch=False, max_iters=6, val_interval=100)
    runner = build_runner(tmp_path, train_cfg, [hook])
    runner.train()
    expected = [[schedule.momentum_at(i)] * 3 + [0.0] for i in range(6)]
    assert runner.model.momenta == expected

    resumed = build_runner(tmp_path / 'resumed', train_cfg, [hook],
                           resume_from=str(tmp_path / 'iter_2.pth'))
    with safe_loading():
        resumed.train()
    assert resumed.model.momenta == expected[2:]


def test_precise_hook_rejects_bad_arguments():
    with pytest.raises(ValueError):
        PreciseBCNHook(num_samples=0)
    with pytest.raises(ValueError):
        PreciseBCNHook(interval=0)
