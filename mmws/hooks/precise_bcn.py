"""``mmws.PreciseBCNHook``: BCN estimates recomputed as population statistics of the BCN inputs.

In micro-batch training a BCN's estimates are exponential averages of a few recent batches,
taken while the weights move. Like PreciseBN (Wu & Johnson, *Rethinking "Batch" in BatchNorm*;
mmpretrain's ``PreciseBNHook``), this hook periodically replaces them with exact statistics of
each BCN's input over many training images, with the weights held fixed.
"""
import contextlib
import itertools
import math
import random
import warnings
from typing import Dict, Iterable, Iterator, Optional

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..models import BCN
from ..registry import HOOKS


def trained_bcns(model: nn.Module) -> Dict[str, BCN]:
    """The BCN layers whose estimates training updates, by module name.

    Those that ``model.train()`` leaves in training mode (mmdet's ``frozen_stages`` switches
    the norms of frozen stages to eval) and whose ``momentum`` is not 0 (frozen estimates).
    The modules' training flags are restored afterwards.
    """
    modes = {module: module.training for module in model.modules()}
    model.train()
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, BCN) and module.training and module.momentum > 0}
    for module, training in modes.items():
        module.training = training
    return layers


class _InputMoments:
    """A forward pre-hook summing a BCN's input per channel in float64.

    Keeps, per channel, ``[M, Σ (x - s), Σ (x - s)²]`` over the ``M`` elements ``(n, *S)`` of
    the calls whose values in that channel are all finite, shifted by ``s``, the layer's
    estimate of the mean before the pass (it keeps the sum of squares well conditioned). A call
    with a non-finite value in a channel adds nothing to that channel (as a BCN training step
    leaves that channel's estimates untouched) and counts in ``skipped``; decided on the device.
    """

    def __init__(self, shift: Tensor) -> None:
        self.shift = shift.detach().double()
        self.sums = shift.new_zeros(3, shift.numel(), dtype=torch.float64)
        self.skipped = shift.new_zeros(1, dtype=torch.float64)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        if x.numel() == 0:
            return
        centred = x.transpose(0, 1).reshape(x.shape[1], -1).double() - self.shift[:, None]
        call = torch.stack([centred.new_full((centred.shape[0], ), centred.shape[1]),
                            centred.sum(1), centred.square().sum(1)])
        finite = torch.isfinite(call).all(0)
        self.sums += torch.where(finite, call, 0)
        self.skipped += finite.logical_not().any()


def _training_forward(model: nn.Module, batch) -> None:
    """The forward of a training step, ``mode='loss'`` (losses computed and discarded)."""
    data = model.data_preprocessor(batch, True)
    if isinstance(data, dict):
        model(**data, mode='loss')
    elif isinstance(data, (list, tuple)):
        model(*data, mode='loss')
    else:
        raise TypeError(f'the data preprocessor returned a {type(data).__name__}; expected a '
                        'dict, list or tuple')


@torch.no_grad()
def recompute_bcn_estimates(model: nn.Module, batches: Iterable) -> Dict[str, int]:
    """Set each trained BCN's estimates to the statistics of its input over ``batches``.

    The model runs the forward of a training step (``model.train()``, ``mode='loss'``, no
    gradients) on every batch, so each BCN sees the inputs it sees in training (RoI heads their
    sampled RoIs, auxiliary heads included), while the BCNs of :func:`trained_bcns` are in eval
    mode: they normalize with their current estimates and update nothing. Over the ``M``
    elements ``(n, *S)`` of all calls of a layer on all processes, per channel ``c``::

        running_mean[c] = μ_c = (1/M) Σ x[n,c,*S]
        running_var[c]  = (1/M) Σ (x[n,c,*S] − μ_c)²

    the biased variance over all elements, so the spread of the per-image means counts. All
    layers are measured in one pass and set together at the end: a layer's statistics are those
    of its input under the estimates the upstream layers had before the call.

    Nothing else changes: parameters are untouched, every other buffer (BatchNorm running
    statistics, frozen BCNs, the step counters) is restored after the pass, and every module's
    training flag is restored. Under ``torch.distributed`` the sums of all processes are added
    in one all-reduce, so every process ends with the same estimates (every process must call
    this; give them equal numbers of batches where other layers, e.g. ``SyncBatchNorm``,
    communicate in each forward).

    Args:
        model: An MMEngine model (``data_preprocessor`` and ``forward(..., mode='loss')``),
            not wrapped in DDP.
        batches: Training batches, as the train dataloader yields them.

    A call whose input is non-finite in a channel is left out of that channel's statistics
    (one warning names the layers); a channel without finite input keeps its estimates.

    Returns:
        ``{layer name: M}`` for every trained BCN (``M``: the elements per channel, the most
        of any channel). A layer with ``M = 0`` (no input on any process) keeps its
        estimates.
    """
    layers = trained_bcns(model)
    if not layers:
        return {}
    moments = {name: _InputMoments(layer.running_mean) for name, layer in layers.items()}
    modes = {module: module.training for module in model.modules()}
    saved_buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    handles = [layer.register_forward_pre_hook(moments[name]) for name, layer in layers.items()]
    try:
        model.train()
        for layer in layers.values():
            layer.eval()
        for batch in batches:
            _training_forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
        for buffer, saved in saved_buffers:
            buffer.copy_(saved)

    packed = torch.cat([torch.cat([m.sums.flatten(), m.skipped]) for m in moments.values()])
    all_reduce(packed)
    counts, skipped = {}, {}
    for (name, layer), sums in zip(layers.items(),
                                   packed.split([m.sums.numel() + 1 for m in moments.values()])):
        skipped[name] = int(sums[-1])
        count, centred_sum, centred_square_sum = sums[:-1].view(3, -1)
        counts[name] = int(count.max())
        if counts[name] == 0:
            continue
        offset = centred_sum / count.clamp_min(1)
        reached = count > 0  # channels without a finite input keep their estimates
        mean = moments[name].shift + offset
        var = (centred_square_sum / count.clamp_min(1) - offset.square()).clamp_min(0)
        layer.running_mean.copy_(torch.where(reached, mean, layer.running_mean.double()))
        layer.running_var.copy_(torch.where(reached, var, layer.running_var.double()))
    if any(skipped.values()):
        warnings.warn('PreciseBCNHook: non-finite inputs left out (calls per layer): ' +
                      ', '.join(f'{name}: {n}' for name, n in skipped.items() if n),
                      RuntimeWarning)
    return counts


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU and current CUDA device) random states on exit,
    so that drawing extra batches (augmentations, RoI sampling) leaves training's randomness as
    it would be without them."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def sample_batches(loader: DataLoader, num_batches: int, seed: int, epoch: int) -> Iterator:
    """``num_batches`` batches of training samples for this process, like ``loader``'s.

    A fresh :class:`~mmengine.dataset.DefaultSampler` (shuffled by ``seed`` and ``epoch``, split
    across processes) draws from ``loader.dataset`` through its pipeline and collate function,
    so the training loop's own iterator is left where it is. A dataset shorter than
    ``num_batches`` is passed over again (next epoch).
    """
    sampler = DefaultSampler(loader.dataset, shuffle=True, seed=seed)
    sample_loader = DataLoader(loader.dataset, batch_size=_batch_size(loader), sampler=sampler,
                               num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                               worker_init_fn=loader.worker_init_fn)
    if len(sample_loader) == 0:
        raise ValueError('PreciseBCNHook: the training dataset is empty')

    def epochs() -> Iterator:
        for index in itertools.count(epoch):
            sampler.set_epoch(index)
            yield from sample_loader

    return itertools.islice(epochs(), num_batches)


def _batch_size(loader: DataLoader) -> int:
    return loader.batch_size or loader.batch_sampler.batch_size


@HOOKS.register_module()
class PreciseBCNHook(Hook):
    """Recompute every trained BCN's estimates as population statistics, before validation.

    At the end of a training iteration (epoch, for epoch-based loops) after which the loop
    validates, and at the end of training, it runs :func:`recompute_bcn_estimates` on
    ``num_samples`` training images (all processes together): each trained BCN's
    ``running_mean`` / ``running_var`` become the mean and biased variance of its input over
    all their elements. Its priority (``ABOVE_NORMAL``) puts it before the ``CheckpointHook``,
    so the checkpoint of that iteration holds the new estimates, and the validation that follows
    uses them; micro-batch training then moves on from them. The extra batches come from a
    separate sampler and the random states are restored afterwards, so the training data and
    randomness are those of a run without the hook.

    Use it in a config as::

        custom_hooks = [dict(type='mmws.PreciseBCNHook', num_samples=1024)]

    Args:
        num_samples: Training images per recomputation, all processes together (rounded up to
            whole batches on every process).
        interval: Recompute every ``interval`` iterations (epochs, for
            ``EpochBasedTrainLoop``) and at the end of training, instead of at every validation.
            ``None`` (default) follows the training loop's ``val_begin`` / ``val_interval``.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_samples: int = 1024, interval: Optional[int] = None) -> None:
        if num_samples < 1:
            raise ValueError(f'PreciseBCNHook num_samples must be >= 1, got {num_samples}')
        if interval is not None and interval < 1:
            raise ValueError(f'PreciseBCNHook interval must be >= 1 or None, got {interval}')
        self.num_samples = num_samples
        self.interval = interval

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not isinstance(runner.train_loop, EpochBasedTrainLoop) and self._due(
                runner, runner.iter + 1, runner.max_iters):
            self._recompute(runner, runner.iter + 1)

    def after_train_epoch(self, runner) -> None:
        if isinstance(runner.train_loop, EpochBasedTrainLoop) and self._due(
                runner, runner.epoch + 1, runner.max_epochs):
            self._recompute(runner, runner.epoch + 1)

    def _due(self, runner, done: int, total: int) -> bool:
        """Whether to recompute after ``done`` of ``total`` iterations (or epochs)."""
        if done == total:
            return True
        if self.interval is not None:
            return done % self.interval == 0
        loop = runner.train_loop
        return (runner.val_loop is not None and done >= loop.val_begin
                and done % loop.val_interval == 0)

    def _recompute(self, runner, done: int) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        loader = runner.train_dataloader
        batch_size, world_size = _batch_size(loader), get_world_size()
        num_batches = math.ceil(self.num_samples / (batch_size * world_size))
        with preserved_random_state():
            counts = recompute_bcn_estimates(
                model, sample_batches(loader, num_batches, runner.seed, done))
        empty = sorted(name for name, count in counts.items() if count == 0)
        runner.logger.info(
            f'PreciseBCNHook: recomputed the estimates of {len(counts) - len(empty)} BCN layers '
            f'from {num_batches} batches of {batch_size} training images on each of '
            f'{world_size} processes')
        if empty:
            runner.logger.warning(f'PreciseBCNHook: no input reached {empty}; their estimates '
                                  'are unchanged')
