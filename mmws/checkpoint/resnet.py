"""The target of the converter: state-dict keys and shapes of the OpenMMLab ``ResNet`` backbone.

mmdet's ``ResNet`` and mmseg's ``ResNet`` (``deep_stem=False``, the ResNetV1b-style 7x7 stem)
name their tensors alike::

    conv1.weight                          stem conv, (64, 3, 7, 7)
    <norm>1.*                             stem norm
    layer{s}.{b}.conv{k}.weight           block convs
    layer{s}.{b}.<norm>{k}.*              block norms
    layer{s}.0.downsample.0.weight        projection shortcut conv (1x1)
    layer{s}.0.downsample.1.*             projection shortcut norm

where ``<norm>`` is the norm layer's ``_abbr_`` (``gn`` for GroupNorm, ``bcn`` for
:class:`mmws.BCN`). Shapes do not depend on ``style`` or dilations, so one template serves
detection (strides 2-2-2) and segmentation (dilated last stages). The deep-stem variants
(mmseg ``ResNetV1c``/``ResNetV1d``) have a 3-conv ``stem.*`` instead of ``conv1``: a 7x7 stem
checkpoint cannot fill them.
"""
from typing import Dict, Tuple

Shape = Tuple[int, ...]

#: ``depth -> (bottleneck, blocks per stage)`` of the ResNets mmdet/mmseg build.
RESNET_ARCHS: Dict[int, Tuple[bool, Tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}

#: Tensor names of one norm layer, by the norm's ``_abbr_`` (all ``(C,)`` but the step counter).
NORM_TENSORS = {
    'gn': ('weight', 'bias'),
    'bcn': ('weight', 'bias', 'bn_weight', 'bn_bias', 'running_mean', 'running_var',
            'num_batches_tracked'),
}

#: Tensors a target may lack: :class:`mmws.BCN` loads a missing step counter as 0.
OPTIONAL_TENSORS = ('num_batches_tracked', )


def resnet_depth(bottleneck: bool, stage_blocks: Tuple[int, ...]) -> int:
    """The depth of the ResNet with this block type and blocks per stage.

    Raises:
        ValueError: If no mmdet/mmseg ResNet has that structure.
    """
    for depth, arch in RESNET_ARCHS.items():
        if arch == (bottleneck, tuple(stage_blocks)):
            return depth
    block = 'Bottleneck' if bottleneck else 'BasicBlock'
    raise ValueError(f'no ResNet depth has {block} blocks per stage {tuple(stage_blocks)}; '
                     f'known: { {d: a[1] for d, a in RESNET_ARCHS.items()} }')


def _norm_shapes(prefix: str, channels: int, norm: str) -> Dict[str, Shape]:
    return {f'{prefix}.{name}': (() if name == 'num_batches_tracked' else (channels, ))
            for name in NORM_TENSORS[norm]}


def resnet_template(depth: int, norm: str) -> Dict[str, Shape]:
    """Every state-dict key of an mmdet/mmseg ``ResNet`` of ``depth`` and its shape.

    Args:
        depth: 18, 34, 50, 101 or 152.
        norm: The norm layers' ``_abbr_``: ``'gn'`` or ``'bcn'``.

    Returns:
        ``{key: shape}`` in module order.
    """
    if depth not in RESNET_ARCHS:
        raise ValueError(f'ResNet depth must be one of {sorted(RESNET_ARCHS)}, got {depth}')
    if norm not in NORM_TENSORS:
        raise ValueError(f'norm must be one of {sorted(NORM_TENSORS)}, got {norm!r}')
    bottleneck, stage_blocks = RESNET_ARCHS[depth]
    expansion = 4 if bottleneck else 1
    template: Dict[str, Shape] = {'conv1.weight': (64, 3, 7, 7)}
    template.update(_norm_shapes(f'{norm}1', 64, norm))
    in_channels = 64
    for stage, num_blocks in enumerate(stage_blocks):
        planes = 64 * 2**stage
        for block in range(num_blocks):
            prefix = f'layer{stage + 1}.{block}'
            if bottleneck:
                convs = [(planes, in_channels, 1), (planes, planes, 3),
                         (planes * expansion, planes, 1)]
            else:
                convs = [(planes, in_channels, 3), (planes, planes, 3)]
            for k, (out_c, in_c, size) in enumerate(convs, start=1):
                template[f'{prefix}.conv{k}.weight'] = (out_c, in_c, size, size)
                template.update(_norm_shapes(f'{prefix}.{norm}{k}', out_c, norm))
            if block == 0 and in_channels != planes * expansion:
                template[f'{prefix}.downsample.0.weight'] = (planes * expansion, in_channels, 1, 1)
                template.update(_norm_shapes(f'{prefix}.downsample.1', planes * expansion, norm))
            in_channels = planes * expansion
    return template
