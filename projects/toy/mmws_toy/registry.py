"""Registries of the toy project: children of MMEngine's root registries under the scope
``mmws_toy``.

Configs write ``type='mmws_toy.ToyCocoDataset'`` and so on; the root registry imports this
module, then the ``locations``, on the first lookup of the prefix (as for ``mmws.``).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

LOCATIONS = ['mmws_toy']
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmws_toy', locations=LOCATIONS)
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmws_toy',
                      locations=LOCATIONS)
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmws_toy', locations=LOCATIONS)
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mmws_toy', locations=LOCATIONS)
