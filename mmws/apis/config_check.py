"""Checks of a config's registry types, before a runner builds its model.

mmcv's ``build_conv_layer``/``build_norm_layer``/``build_activation_layer`` report an unknown
``type`` as ``KeyError: 'Cannot find None in registry under scope name mmdet'`` (the name they
print is the failed lookup's result), and an unprefixed ``type='ConvWS'`` quietly builds mmcv's
``ConvWS2d``. :func:`check_model_types` looks up every ``conv_cfg``/``norm_cfg``/``act_cfg`` of
the model config first, as those builders do (the registry of the config's ``default_scope``,
then its ancestors; a ``scope.`` prefix selects another scope), and raises
:class:`UnknownTypeError` naming the type, where it is, the scope and the closest registered
names; :func:`explain_unknown_type` adds the closest names to MMEngine's own ``KeyError`` for
other types.
"""
import difflib
import importlib
import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope, Registry

#: Config keys whose ``type`` mmcv's layer builders look up in ``MODELS``.
LAYER_CFG_KEYS = ('conv_cfg', 'norm_cfg', 'act_cfg')
_MMENGINE_UNKNOWN = re.compile(r"^(\S+) is not in the (\S+)::(\S+) registry")


class UnknownTypeError(ValueError):
    """A config ``type`` that no registry reachable from the config's scope holds."""


def _dicts_under(node: Any, path: str) -> Iterator[Tuple[str, str, dict]]:
    """``(path, key, value)`` of every dict-valued entry in a nested config."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f'{path}.{key}'
            if isinstance(value, dict):
                yield child, key, value
            yield from _dicts_under(value, child)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _dicts_under(value, f'{path}[{i}]')


def _registry_tree(registry: Registry) -> Iterator[Registry]:
    root = registry
    while root.parent is not None:
        root = root.parent
    pending = [root]
    while pending:
        node = pending.pop(0)
        yield node
        pending += list(node.children.values())


def registered_names(registry: Registry) -> List[Tuple[str, type]]:
    """``(name as a config writes it, class)`` for everything in ``registry``'s tree: names of
    ``registry`` and its ancestors bare, those of other scopes with their ``scope.`` prefix."""
    lineage = []
    node: Optional[Registry] = registry
    while node is not None:
        lineage.append(node)
        node = node.parent
    names = []
    for node in _registry_tree(registry):
        node.import_from_location()
        prefix = '' if node in lineage else f'{node.scope}.'
        names += [(f'{prefix}{key}', cls) for key, cls in node.module_dict.items()]
    return names


def closest_names(name: str, registry: Registry, count: int = 3) -> List[str]:
    """The ``count`` registered names most like ``name`` (``difflib`` ratio, case-insensitive,
    of the full names and of the names without scope prefix), each with the class it builds."""
    def bare(text: str) -> str:
        return text.rpartition('.')[2].lower()

    scope = name.rpartition('.')[0]
    scored = []
    for candidate, cls in registered_names(registry):
        score = max(difflib.SequenceMatcher(None, name.lower(), candidate.lower()).ratio(),
                    difflib.SequenceMatcher(None, bare(name), bare(candidate)).ratio())
        same_scope = candidate.rpartition('.')[0] == scope
        scored.append((-score, not same_scope, candidate, cls))
    scored.sort(key=lambda item: item[:3])
    return [f"'{candidate}' ({cls.__module__}.{cls.__qualname__})"
            for score, _, candidate, cls in scored[:count] if -score >= 0.5]


def _unknown(name: str, where: str, registry: Registry) -> UnknownTypeError:
    close = closest_names(name, registry)
    hint = ('; closest registered names: ' + ', '.join(close)) if close else ''
    return UnknownTypeError(
        f"unknown type {name!r} in {where}: not in the {registry.name} registry of scope "
        f"{registry.scope!r}, its parents, or the scope its prefix names{hint}")


def toolbox_models(scope: Optional[str]) -> Registry:
    """The ``MODELS`` registry of a toolbox scope (``'mmdet'``, ``'mmseg'``); MMEngine's root
    registry without a scope."""
    if scope is None:
        return MMENGINE_MODELS
    return importlib.import_module(f'{scope}.registry').MODELS


def check_model_types(cfg: Config) -> None:
    """Raise :class:`UnknownTypeError` for a layer ``type`` of ``cfg.model`` that the model's
    builders would not find, and warn once about unprefixed ``ConvWS`` (mmcv's ``ConvWS2d``)
    in a config that uses mmws (see the module docstring)."""
    scope = cfg.get('default_scope')
    registry = toolbox_models(scope)
    mmcv_convws = []
    with DefaultScope.overwrite_default_scope(scope):
        for where, key, value in _dicts_under(cfg.get('model', {}), 'model'):
            layer_type = value.get('type')
            if key not in LAYER_CFG_KEYS or not isinstance(layer_type, str):
                continue
            if registry.get(layer_type) is None:
                raise _unknown(layer_type, where, registry)
            if key == 'conv_cfg' and layer_type == 'ConvWS':
                mmcv_convws.append(where)
    if mmcv_convws and _uses_mmws(cfg):
        more = f' (and {len(mmcv_convws) - 1} more)' if len(mmcv_convws) > 1 else ''
        print_log(
            f"{mmcv_convws[0]}{more}: type='ConvWS' is mmcv's ConvWS2d "
            "(mmcv.cnn.bricks.conv_ws.ConvWS2d), not mmws's layer: mmcv registers that name "
            "at the root. Write type='mmws.ConvWS' for mmws.ConvWS.",
            logger='current', level=logging.WARNING)


def _uses_mmws(cfg: Config) -> bool:
    """Whether the config imports mmws or names an ``mmws.`` type."""
    imports = cfg.get('custom_imports', {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else imports
    return any(str(i).split('.')[0] == 'mmws' for i in imports) or "'mmws." in cfg.pretty_text


def explain_unknown_type(error: KeyError) -> Optional[UnknownTypeError]:
    """MMEngine's ``'X is not in the S::N registry'`` with the closest registered names, or
    ``None`` for another ``KeyError``."""
    match = _MMENGINE_UNKNOWN.match(str(error.args[0]) if error.args else '')
    if match is None:
        return None
    name, scope, registry_name = match.groups()
    try:
        module = importlib.import_module(f'{scope}.registry')
    except ImportError:
        return None
    registries = [r for r in vars(module).values()
                  if isinstance(r, Registry) and r.name == registry_name]
    if not registries:
        return None
    return _unknown(name, 'the config', registries[0])


@contextmanager
def unknown_types_explained() -> Iterator[None]:
    """Re-raise MMEngine's unknown-type ``KeyError`` inside the block as
    :class:`UnknownTypeError` with the closest registered names (:func:`explain_unknown_type`);
    for what a runner builds late (datasets, transforms, metrics, hooks)."""
    try:
        yield
    except KeyError as error:
        explained = explain_unknown_type(error)
        if explained is None:
            raise
        raise explained from None
