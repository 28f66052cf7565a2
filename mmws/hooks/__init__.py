"""MMEngine hooks for BCN's estimates and for exact resume, registered in
:data:`mmws.registry.HOOKS` (scope ``mmws``)."""
from .bcn_momentum import BCNMomentumHook
from .precise_bcn import PreciseBCNHook, recompute_bcn_estimates
from .random_state import RandomStateHook

__all__ = ['BCNMomentumHook', 'PreciseBCNHook', 'RandomStateHook', 'recompute_bcn_estimates']
