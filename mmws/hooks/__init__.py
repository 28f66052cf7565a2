"""MMEngine hooks for BCN's estimates, registered in :data:`mmws.registry.HOOKS` (scope
``mmws``)."""
from .bcn_momentum import BCNMomentumHook
from .precise_bcn import PreciseBCNHook, recompute_bcn_estimates

__all__ = ['BCNMomentumHook', 'PreciseBCNHook', 'recompute_bcn_estimates']
