"""MMEngine hooks of mmws, registered in :data:`mmws.registry.HOOKS` (scope ``mmws``)."""
from .bcn_momentum import BCNMomentumHook
from .metrics_file import MetricsFileHook
from .precise_bcn import PreciseBCNHook, recompute_bcn_estimates
from .random_state import RandomStateHook

__all__ = [
    'BCNMomentumHook', 'MetricsFileHook', 'PreciseBCNHook', 'RandomStateHook',
    'recompute_bcn_estimates'
]
