"""Registries of mmws: children of MMEngine's root registries under the scope ``mmws``.

Configs refer to our classes as ``type='mmws.ConvWS'``, ``type='mmws.BCN'``,
``type='mmws.PreciseBCNHook'``, and so on. The root registry resolves the ``mmws.`` prefix to
these children from any default scope (``mmdet``, ``mmseg``), importing ``mmws.registry`` and
then the ``locations`` on first lookup, so the prefix works even before ``mmws`` was imported.
mmcv's own root-level ``ConvWS`` is left untouched.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmws', locations=['mmws.models'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mmws', locations=['mmws.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmws', locations=['mmws.hooks'])
