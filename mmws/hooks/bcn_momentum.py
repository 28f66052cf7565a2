"""``mmws.BCNMomentumHook``: a schedule for the update rate of the BCN estimates."""
import math
from typing import List

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..models import BCN
from ..registry import HOOKS

SCHEDULES = ('linear', 'cosine')


@HOOKS.register_module()
class BCNMomentumHook(Hook):
    """Set every BCN's update rate ``momentum`` before each training iteration.

    At iteration ``i`` (``runner.iter``, counted from 0 over the whole training, also in
    epoch-based loops), with ``t = (i − begin) / (end − begin)`` clipped to ``[0, 1]``::

        linear: r(i) = r₀ + (r₁ − r₀) t
        cosine: r(i) = r₁ + (r₀ − r₁) (1 + cos πt) / 2

    where ``r₀ = start_momentum`` and ``r₁ = end_momentum``: ``r₀`` up to ``begin``, ``r₁`` from
    ``end`` on. A fast early rate lets the estimates follow the quickly changing activations of
    early training; a slow late rate averages out more per-image noise. With
    ``average_warmup`` a BCN's step-``t`` rate is still at least ``1 / (t + 1)``.

    The rate is a function of the iteration counter only, so a resumed run continues the
    schedule where it stopped. It is set on every BCN of the model (unwrapped from DDP) except
    those built with ``momentum=0`` (frozen estimates), and logged as ``bcn_momentum``.

    Use it in a config as::

        custom_hooks = [dict(type='mmws.BCNMomentumHook', start_momentum=0.3,
                             end_momentum=0.05, end=2000, schedule='cosine')]

    Args:
        start_momentum: ``r₀``, in ``[0, 1]``.
        end_momentum: ``r₁``, in ``[0, 1]``.
        end: The iteration from which the rate is ``r₁``.
        begin: The iteration up to which the rate is ``r₀``; less than ``end``.
        schedule: ``'linear'`` or ``'cosine'``.
    """

    def __init__(self,
                 start_momentum: float,
                 end_momentum: float,
                 end: int,
                 begin: int = 0,
                 schedule: str = 'linear') -> None:
        for name, value in (('start_momentum', start_momentum), ('end_momentum', end_momentum)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'BCNMomentumHook {name} must be in [0, 1], got {value}')
        if not 0 <= begin < end:
            raise ValueError(f'BCNMomentumHook needs 0 <= begin < end, got begin={begin}, '
                             f'end={end}')
        if schedule not in SCHEDULES:
            raise ValueError(f'BCNMomentumHook schedule must be one of {SCHEDULES}, got '
                             f'{schedule!r}')
        self.start_momentum = start_momentum
        self.end_momentum = end_momentum
        self.begin = begin
        self.end = end
        self.schedule = schedule
        self._scheduled: List[BCN] = []  # set when training starts

    def momentum_at(self, iteration: int) -> float:
        """The rate ``r(i)`` of iteration ``i``."""
        t = min(max((iteration - self.begin) / (self.end - self.begin), 0.0), 1.0)
        if self.schedule == 'linear':
            return self.start_momentum + (self.end_momentum - self.start_momentum) * t
        return self.end_momentum + (self.start_momentum - self.end_momentum) * (
            1 + math.cos(math.pi * t)) / 2

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._scheduled = [module for module in model.modules()
                           if isinstance(module, BCN) and module.momentum > 0]

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        momentum = self.momentum_at(runner.iter)
        for module in self._scheduled:
            module.momentum = momentum
        runner.message_hub.update_scalar('train/bcn_momentum', momentum)
