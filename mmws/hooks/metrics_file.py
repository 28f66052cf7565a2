"""A hook that keeps every evaluation's metrics in ``<work_dir>/metrics.json``."""
import json
import numbers
import os.path as osp
from typing import Dict, List, Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class MetricsFileHook(Hook):
    """Appends ``{'mode', 'epoch', 'iter', <metric>: value, ...}`` after each validation and
    test to ``<work_dir>/metrics.json`` (a JSON list, kept across resumed runs).

    MMEngine's own logs hold the same numbers inside timestamped run directories, mixed with
    the training losses; this file is the stable place scripts and the plot tool read.

    Args:
        filename: File name inside the runner's work dir.
    """

    priority = 'LOWEST'

    def __init__(self, filename: str = 'metrics.json') -> None:
        self.filename = filename

    def path(self, runner) -> str:
        return osp.join(runner.work_dir, self.filename)

    def read(self, runner) -> List[dict]:
        """The records written so far (an empty list without a file)."""
        if not osp.isfile(self.path(runner)):
            return []
        with open(self.path(runner)) as f:
            return json.load(f)

    @master_only
    def _append(self, runner, mode: str, metrics: Optional[Dict[str, float]]) -> None:
        if not metrics:
            return
        record = dict(mode=mode, epoch=runner.epoch, iter=runner.iter)
        record.update({key: float(value) for key, value in metrics.items()
                       if isinstance(value, numbers.Real)})
        records = self.read(runner) + [record]
        with open(self.path(runner), 'w') as f:
            json.dump(records, f, indent=1)

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self._append(runner, 'val', metrics)

    def after_test_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self._append(runner, 'test', metrics)
