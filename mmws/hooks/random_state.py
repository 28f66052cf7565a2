"""``mmws.RandomStateHook``: checkpoints carry every random generator's state, so ``--resume``
continues a run exactly as if it had never stopped.

MMEngine checkpoints hold the model, optimizer, schedulers and message hub, and on resume the
runner re-seeds the generators from the config's seed: dropout masks, RoI sampling, random
flips and crops after the resume point then differ from the uninterrupted run's.
"""
import random
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import DataLoader

from ..registry import HOOKS

CHECKPOINT_KEY = 'random_states'
FORMAT_VERSION = 1

State = Dict[str, object]


def capture_random_state() -> State:
    """This process's global generators, as tensors, ints, floats, strings and lists only.

    Those plain types are what ``torch.load(..., weights_only=True)`` reads with no allowlist.
    CUDA generators are captured per device once CUDA is initialized (before that no CUDA
    random number was drawn).

    Returns:
        ``dict(python=..., numpy=..., torch=uint8 tensor, cuda=[uint8 tensor per device])``:
        Python's Mersenne Twister (625 words: 624 of state and the position) and its cached
        Gaussian, NumPy's legacy global ``RandomState`` (MT19937: 624 words, position, cached
        Gaussian), torch's CPU generator.
    """
    version, words, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):
        raise TypeError('RandomStateHook saves NumPy\'s legacy global MT19937 generator; '
                        f'np.random.get_state() returned {type(numpy_state).__name__}')
    bit_generator, key, position, has_gauss, cached_gaussian = numpy_state
    cuda = (torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized() else [])
    return dict(
        python=dict(version=version, state=torch.tensor(words, dtype=torch.int64),
                    gauss_next=gauss_next),
        numpy=dict(bit_generator=bit_generator, key=torch.from_numpy(key.astype(np.int64)),
                   pos=int(position), has_gauss=int(has_gauss),
                   cached_gaussian=float(cached_gaussian)),
        torch=torch.get_rng_state(),
        cuda=cuda)


def restore_random_state(state: State) -> List[str]:
    """Set this process's generators to ``state`` (from :func:`capture_random_state`).

    Tensors may come back on another device (MMEngine resumes with ``map_location`` the
    training device); they are read back on the CPU.

    Returns:
        What could not be restored, in words (empty when everything was): CUDA states saved
        for a different number of devices than this process sees.
    """
    python = state['python']
    random.setstate((python['version'], tuple(python['state'].tolist()), python['gauss_next']))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['bit_generator'],
                         numpy_state['key'].cpu().numpy().astype(np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'].cpu())
    saved_cuda = state['cuda']
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device, cuda_state in enumerate(saved_cuda[:devices]):
        torch.cuda.set_rng_state(cuda_state.cpu(), device)
    if saved_cuda and len(saved_cuda) != devices:
        return [f'CUDA states of {len(saved_cuda)} devices saved, {devices} visible now']
    return []


def _sampler_seed(loader: DataLoader) -> Optional[int]:
    """The seed of the sampler that orders the samples (MMEngine's samplers have one; it sits
    inside the batch sampler when there is one), or ``None``."""
    seed = getattr(getattr(loader.batch_sampler, 'sampler', loader.sampler), 'seed', None)
    return None if seed is None else int(seed)


class _RestoreOnFetch:
    """Wraps an ``IterBasedTrainLoop``'s data iterator: passes the loop's replay of the first
    ``skip`` batches through, then restores the random states just before the next fetch (the
    first batch trained after the resume) and puts the original iterator back."""

    def __init__(self, loop: IterBasedTrainLoop, skip: int, restore) -> None:
        self.loop, self.inner = loop, loop.dataloader_iterator
        self.skip, self.restore = skip, restore

    def __iter__(self) -> '_RestoreOnFetch':
        return self

    def __next__(self):
        if self.skip > 0:
            self.skip -= 1
            return next(self.inner)
        self.loop.dataloader_iterator = self.inner
        self.restore()
        return next(self.inner)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the random generators' states in every checkpoint; restore them on resume.

    Saved under ``checkpoint['random_states']`` (tensors, ints, floats, strings and lists only,
    so ``torch.load(weights_only=True)`` reads it with no allowlist): Python's ``random``,
    NumPy's global generator, torch's CPU generator and every CUDA device's, one set per
    process (gathered from all ranks under ``torch.distributed`` at the iterations a
    ``CheckpointHook`` saves), with the sampler seed and the worker count.

    On resume the states are restored at the moment they were saved in the uninterrupted run:
    ``IterBasedTrainLoop`` first replays the data loader up to the saved iteration (its
    pipeline draws random numbers in the main process when ``num_workers=0``; workers, seeded
    by MMEngine from the seed and their id, replay their own draws), so the states are set
    after that replay, right before the next batch is fetched; ``EpochBasedTrainLoop`` gets
    them in ``before_train_epoch``. Validation during training is isolated: the states are
    saved before it and restored after it, so training draws the same numbers whether or when
    it validates (the data loader of each validation draws a torch seed, for instance).
    A ``load_from`` (fine-tuning) checkpoint's states are ignored: a new run starts from its
    seed. A mismatch that makes resume inexact is logged as a warning: a different sampler
    seed (a config without ``randomness.seed``: MMEngine builds the loader before it restores
    the checkpoint's seed), world size or worker count, or a mid-epoch checkpoint of an
    ``EpochBasedTrainLoop`` (MMEngine restarts that epoch).

    Use it in a config as ``custom_hooks = [dict(type='mmws.RandomStateHook')]`` (mmws's
    configs inherit it from ``configs/_base_/exact_resume.py``).
    """

    priority = 'LOW'  # after_train_iter: before the CheckpointHook (VERY_LOW) that saves

    def __init__(self) -> None:
        self._training = False
        self._val_snapshot: Optional[State] = None
        self._gathered: Optional[dict] = None  # {'iter': ..., 'ranks': [...]}, distributed
        self._loaded: Optional[dict] = None  # the last loaded checkpoint's entry and position
        self._epoch_restore: Optional[dict] = None  # entry to restore at the next epoch start
        self._epoch_end = False

    def before_train(self, runner) -> None:
        self._training = True
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        entry = loaded['entry']
        if (loaded['iter'], loaded['epoch']) != (runner.iter, runner.epoch):
            if entry is not None:  # a load_from (fine-tuning) run starts from its seed
                runner.logger.info(
                    f'RandomStateHook: the loaded checkpoint (epoch {loaded["epoch"]}, iteration '
                    f'{loaded["iter"]}) is not resumed from: its random states are not used')
            return
        if entry is None:
            runner.logger.warning(
                'RandomStateHook: the resumed checkpoint holds no random states (saved without '
                'this hook): training goes on from re-seeded generators, not exactly as the '
                'interrupted run would have')
            return
        if entry.get('version') != FORMAT_VERSION:
            raise ValueError(f'RandomStateHook reads random_states version {FORMAT_VERSION}, '
                             f'the resumed checkpoint has {entry.get("version")!r}')
        self._warn_on_mismatch(runner, entry, loaded['seed'])
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreOnFetch(loop, runner.iter,
                                                       lambda: self._restore(runner, entry))
        else:
            self._epoch_restore = entry

    def before_train_epoch(self, runner) -> None:
        if self._epoch_restore is not None:
            self._restore(runner, self._epoch_restore)
            self._epoch_restore = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._epoch_end = False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if get_world_size() > 1 and self._checkpoint_due(runner, by_epoch=False):
            self._gather(runner)

    def after_train_epoch(self, runner) -> None:
        self._epoch_end = True
        if get_world_size() > 1 and self._checkpoint_due(runner, by_epoch=True):
            self._gather(runner)

    def after_train(self, runner) -> None:
        self._training = False

    def before_val(self, runner) -> None:
        if self._training:
            self._val_snapshot = capture_random_state()

    def after_val(self, runner) -> None:
        if self._val_snapshot is not None:
            restore_random_state(self._val_snapshot)
            self._val_snapshot = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Add ``checkpoint['random_states']`` (called on rank 0 only, by MMEngine)."""
        meta = checkpoint['meta']
        if self._gathered is not None and self._gathered['iter'] == runner.iter:
            ranks = self._gathered['ranks']
        else:  # one process, or a checkpoint no CheckpointHook announced: this rank's states
            ranks = [self._val_snapshot or capture_random_state()]
        loader = runner.train_dataloader
        checkpoint[CHECKPOINT_KEY] = dict(
            version=FORMAT_VERSION,
            epoch=int(meta['epoch']),
            iter=int(meta['iter']),
            epoch_end=self._epoch_end,
            world_size=get_world_size(),
            num_workers=int(loader.num_workers),
            sampler_seed=_sampler_seed(loader),
            ranks=ranks)

    def _checkpoint_due(self, runner, by_epoch: bool) -> bool:
        """Whether a ``CheckpointHook`` of the runner saves at the end of this iteration
        (``by_epoch=False``) or epoch, by its own interval / ``save_begin`` / ``save_last``."""
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook) or hook.by_epoch != by_epoch:
                continue
            if by_epoch and (hook.every_n_epochs(runner, hook.interval, hook.save_begin) or
                             (hook.save_last and hook.is_last_train_epoch(runner))):
                return True
            if not by_epoch and (
                    hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or
                    (hook.save_last and hook.is_last_train_iter(runner))):
                return True
        return False

    def _gather(self, runner) -> None:
        """Every rank's states, in rank order, for the checkpoint rank 0 is about to save."""
        self._gathered = dict(iter=runner.iter, ranks=all_gather_object(capture_random_state()))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the checkpoint's states until training starts (the runner sets its position
        and re-seeds after this call; the loop replays the data loader after that)."""
        entry = checkpoint.get(CHECKPOINT_KEY)
        meta = checkpoint.get('meta', {})
        self._loaded = dict(entry=entry, epoch=meta.get('epoch'), iter=meta.get('iter'),
                            seed=meta.get('seed'))

    def _restore(self, runner, entry: dict) -> None:
        rank, ranks = get_rank(), entry['ranks']
        if rank >= len(ranks):
            return  # _warn_on_mismatch said so
        for problem in restore_random_state(ranks[rank]):
            runner.logger.warning(f'RandomStateHook: {problem}; resume is not exact')
        runner.logger.info(f'RandomStateHook: the random states of iteration {entry["iter"]} '
                           'are restored')

    def _warn_on_mismatch(self, runner, entry: dict, seed: Optional[int]) -> None:
        """Log each difference between the saved run and this one that MMEngine's resume
        cannot undo."""
        loader = runner.train_dataloader
        sampler_seed = _sampler_seed(loader)
        problems = []
        if entry['sampler_seed'] is not None and sampler_seed != entry['sampler_seed']:
            problems.append(
                f'the data sampler was built with seed {sampler_seed}, the checkpoint\'s run with '
                f'{entry["sampler_seed"]} (MMEngine builds the data loader before it restores '
                'the checkpoint\'s seed): the data order differs; resume with '
                f'--cfg-options randomness.seed={seed}')
        if len(entry['ranks']) != get_world_size():
            problems.append(f'the random states of {len(entry["ranks"])} processes were saved, '
                            f'{get_world_size()} run now: the other processes start from '
                            'their seeds')
        if entry['num_workers'] != loader.num_workers:
            problems.append(f'the checkpoint\'s run loaded data with {entry["num_workers"]} '
                            f'workers, this one with {loader.num_workers}: the workers draw '
                            'different numbers')
        if isinstance(runner.train_loop, EpochBasedTrainLoop) and not entry['epoch_end']:
            problems.append('the checkpoint was saved inside an epoch: EpochBasedTrainLoop '
                            'restarts that epoch')
        for problem in problems:
            runner.logger.warning(f'RandomStateHook: {problem}; resume is not exact')
