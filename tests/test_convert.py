"""Checkpoint converter: synthesized sources in the released layouts, at real R-50/R-101 shapes.

The sources and the reference forward are written here from the layouts and equations of
the paper's authors' released checkpoints (torchvision-style BCN+WS/GN+WS ResNets, Detectron ``.pkl`` names), sharing no
code with :mod:`mmws.checkpoint`.
"""
import pickle
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmws.checkpoint import ConversionError, convert_checkpoint, convert_state_dict

ARCHS = {18: (False, (2, 2, 2, 2)), 50: (True, (3, 4, 6, 3)), 101: (True, (3, 4, 23, 3))}
EPS = 1e-5
GROUPS = 32
TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'convert_checkpoint.py'


def torchvision_modules(depth):
    """``(name, kind, shape)`` of every conv (``'conv'``) and norm (``'norm'``) of a
    torchvision ResNet, in forward order."""
    bottleneck, blocks = ARCHS[depth]
    expansion = 4 if bottleneck else 1
    yield 'conv1', 'conv', (64, 3, 7, 7)
    yield 'bn1', 'norm', (64, )
    inplanes = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        for b in range(count):
            p = f'layer{stage + 1}.{b}'
            shapes = ([(planes, inplanes, 1, 1), (planes, planes, 3, 3),
                       (planes * 4, planes, 1, 1)] if bottleneck else
                      [(planes, inplanes, 3, 3), (planes, planes, 3, 3)])
            for k, shape in enumerate(shapes, 1):
                yield f'{p}.conv{k}', 'conv', shape
                yield f'{p}.bn{k}', 'norm', (shape[0], )
            if b == 0 and (stage > 0 or inplanes != planes * expansion):
                yield f'{p}.downsample.0', 'conv', (planes * expansion, inplanes, 1, 1)
                yield f'{p}.downsample.1', 'norm', (planes * expansion, )
            inplanes = planes * expansion


def _conv_weight(gen, shape):
    # Small filters (std 0.02) make the WS epsilon form matter, as in trained nets.
    return torch.randn(shape, generator=gen) * 0.02 + 0.01 * torch.randn(
        shape[0], 1, 1, 1, generator=gen)


def _affine(gen, shape, center):
    return center + 0.2 * torch.randn(shape, generator=gen)


def make_torchvision_source(depth, norm, batch_part='pbn', seed=0):
    """The authors' torchvision-style layout: BCN (batch part ``bnK.<batch_part>.*``, per-group
    affine ``(1, G, 1)``) or GN (``bnK.weight/bias`` ``(C,)``), plus the classifier."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, kind, shape in torchvision_modules(depth):
        if kind == 'conv':
            state[f'{name}.weight'] = _conv_weight(gen, shape)
        elif norm == 'gn':
            state[f'{name}.weight'] = _affine(gen, shape, 1.0)
            state[f'{name}.bias'] = _affine(gen, shape, 0.0)
        else:
            state[f'{name}.weight'] = _affine(gen, (1, GROUPS, 1), 1.0)
            state[f'{name}.bias'] = _affine(gen, (1, GROUPS, 1), 0.0)
            bn = f'{name}.{batch_part}'
            state[f'{bn}.weight'] = _affine(gen, shape, 1.0)
            state[f'{bn}.bias'] = _affine(gen, shape, 0.0)
            state[f'{bn}.running_mean'] = _affine(gen, shape, 0.0)
            state[f'{bn}.running_var'] = 0.5 + torch.rand(shape, generator=gen)
            state[f'{bn}.num_batches_tracked'] = torch.tensor(5000)
            if batch_part == 'bn':  # the README's EstBN
                state[f'{bn}.estbn_moving_speed'] = torch.zeros(1)
    width = 2048 if ARCHS[depth][0] else 512
    state['fc.weight'] = torch.randn(1000, width, generator=gen) * 0.01
    state['fc.bias'] = torch.zeros(1000)
    return state


def detectron_name(torchvision_name):
    """Detectron name of a torchvision module: ``layer1.0.conv1`` -> ``res2_0_branch2a``."""
    if torchvision_name in ('conv1', 'bn1'):
        return 'conv1'
    stage, block, module = torchvision_name.split('.', 2)
    base = f'res{int(stage[5:]) + 1}_{block}_branch'
    if module.startswith('downsample'):
        return base + '1'
    return base + '2' + 'abc'[int(module[-1]) - 1]


def make_detectron_source(depth, seed=0):
    """The maskrcnn-benchmark fork's GN+WS ``.pkl`` blobs (numpy), with optimizer state."""
    gn = make_torchvision_source(depth, 'gn', seed=seed)
    blobs = {}
    for name, kind, _ in torchvision_modules(depth):
        base = detectron_name(name)
        if kind == 'conv':
            blobs[f'{base}_w'] = gn[f'{name}.weight'].numpy()
            blobs[f'{base}_w_momentum'] = np.zeros_like(blobs[f'{base}_w'])
        else:
            blobs[f'{base}_gn_s'] = gn[f'{name}.weight'].numpy()
            blobs[f'{base}_gn_b'] = gn[f'{name}.bias'].numpy()
    blobs['pred_w'] = gn['fc.weight'].numpy()
    blobs['pred_b'] = gn['fc.bias'].numpy()
    return {'blobs': blobs, 'model_iter': 0}, gn


# -- reference forward of the source layout, from the equations -------------------------------
def ws_reference(w, eps_inside_sqrt):
    flat = w.flatten(1)
    mean = flat.mean(1, keepdim=True)
    var = ((flat - mean)**2).sum(1, keepdim=True) / (flat.shape[1] - 1)
    std = torch.sqrt(var + EPS) if eps_inside_sqrt else torch.sqrt(var) + EPS
    return ((flat - mean) / std).view_as(w)


def group_normalize(y, groups):
    n = y.shape[0]
    g = y.reshape(n, groups, -1)
    mean = g.mean(2, keepdim=True)
    var = ((g - mean)**2).mean(2, keepdim=True)
    return ((g - mean) / torch.sqrt(var + EPS)).view_as(y)


def norm_reference(x, state, name, norm, batch_part='pbn'):
    def chan(t):
        return t.view(1, -1, 1, 1)

    if norm == 'gn':
        return group_normalize(x, GROUPS) * chan(state[f'{name}.weight']) + chan(
            state[f'{name}.bias'])
    bn = f'{name}.{batch_part}'
    y = (x - chan(state[f'{bn}.running_mean'])) / torch.sqrt(chan(state[f'{bn}.running_var']) +
                                                             EPS)
    y = y * chan(state[f'{bn}.weight']) + chan(state[f'{bn}.bias'])
    # The authors' channel part: per-group affine on the (N, G, -1) view.
    n = y.shape[0]
    z = group_normalize(y, GROUPS).view(n, GROUPS, -1)
    return (z * state[f'{name}.weight'] + state[f'{name}.bias']).view_as(y)


def resnet_reference(x, state, depth, norm, eps_inside_sqrt, batch_part='pbn'):
    """Stage outputs of a torchvision ResNet (stride in the 3x3 conv) with WS convs."""
    bottleneck, blocks = ARCHS[depth]

    def conv(t, name, stride=1, padding=0):
        return F.conv2d(t, ws_reference(state[f'{name}.weight'], eps_inside_sqrt), None, stride,
                        padding)

    def bn(t, name):
        return norm_reference(t, state, name, norm, batch_part)

    out = F.relu(bn(conv(x, 'conv1', 2, 3), 'bn1'))
    out = F.max_pool2d(out, 3, 2, 1)
    features = []
    for stage, count in enumerate(blocks):
        for b in range(count):
            p = f'layer{stage + 1}.{b}'
            stride = 2 if (stage > 0 and b == 0) else 1
            if bottleneck:
                y = F.relu(bn(conv(out, f'{p}.conv1'), f'{p}.bn1'))
                y = F.relu(bn(conv(y, f'{p}.conv2', stride, 1), f'{p}.bn2'))
                y = bn(conv(y, f'{p}.conv3'), f'{p}.bn3')
            else:
                y = F.relu(bn(conv(out, f'{p}.conv1', stride, 1), f'{p}.bn1'))
                y = bn(conv(y, f'{p}.conv2', 1, 1), f'{p}.bn2')
            identity = out
            if f'{p}.downsample.0.weight' in state:
                identity = bn(conv(out, f'{p}.downsample.0', stride), f'{p}.downsample.1')
            out = F.relu(y + identity)
        features.append(out)
    return features


# -- helpers ----------------------------------------------------------------------------------
def build_backbone(scope, depth, report, **kwargs):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
        __import__('mmseg.models')
    __import__(f'{scope}.models')
    return MODELS.build(dict(type=f'{scope}.ResNet', depth=depth, out_indices=(0, 1, 2, 3),
                             conv_cfg=report['conv_cfg'], norm_cfg=report['norm_cfg'],
                             **kwargs))


def load_converted(path):
    checkpoint = torch.load(path, map_location='cpu')  # weights_only=True (torch's default)
    return checkpoint['state_dict'], checkpoint['meta']['mmws_conversion']


def assert_features_match(model, state, depth, norm, eps_inside_sqrt, batch_part='pbn'):
    model.double()
    model.eval()  # mmdet's ResNet.train() returns None: no chaining
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        ours = model(x)
        ref = resnet_reference(x, {k: v.double() if v.is_floating_point() else v
                                   for k, v in state.items()}, depth, norm, eps_inside_sqrt,
                               batch_part)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# -- tests ------------------------------------------------------------------------------------
def test_bcn_ws_r50_wrapped_to_mmdet_pretrained_init(tmp_path):
    state = make_torchvision_source(50, 'bcn', 'pbn')
    src = tmp_path / 'rn50_bcn_ws.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}, 'epoch': 90}, src)
    out = tmp_path / 'converted.pth'
    report = convert_checkpoint(src, out)
    assert report.complete and report.layout == 'torchvision-bcn' and report.depth == 50
    assert report.conv_cfg == {'type': 'mmws.ConvWS', 'eps_inside_sqrt': True}
    assert report.norm_cfg == {'type': 'mmws.BCN', 'num_groups': 32}
    assert set(report.dropped) == {'fc.weight', 'fc.bias'}
    converted, meta = load_converted(out)
    assert meta['depth'] == 50 and not any(k.startswith('backbone.') for k in converted)

    # MMEngine's Pretrained init (strict=False) loads it; a strict load agrees on every key.
    model = build_backbone('mmdet', 50, meta,
                           init_cfg=dict(type='Pretrained', checkpoint=str(out)))
    model.init_weights()
    model.load_state_dict(converted, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted[key]), key
    # 64 channels in 32 groups: channels 2g and 2g+1 take the affine of group g.
    group_weight = state['layer1.0.bn1.weight'].view(32, 1)
    assert torch.equal(model.layer1[0].bcn1.weight.view(32, 2), group_weight.expand(32, 2))
    assert_features_match(model, state, 50, 'bcn', eps_inside_sqrt=True)


def test_bcn_ws_form_matters():
    """Loading the BCN+WS weights with the GN+WS form of WS changes the features."""
    state = make_torchvision_source(18, 'bcn', 'pbn')
    converted, report = convert_state_dict(state)
    wrong = dict(report.to_meta(), conv_cfg={'type': 'mmws.ConvWS'})
    model = build_backbone('mmdet', 18, wrong)
    model.load_state_dict(converted, strict=True)
    with pytest.raises(AssertionError):
        assert_features_match(model, state, 18, 'bcn', eps_inside_sqrt=True)


def test_bcn_ws_r101_estbn_variant_to_mmseg():
    state = make_torchvision_source(101, 'bcn', 'bn')
    converted, report = convert_state_dict(state)
    assert report.complete and report.depth == 101
    assert sum('estbn_moving_speed' in k for k in report.dropped) == 104  # every BCN
    model = build_backbone('mmseg', 101, report.to_meta())
    model.load_state_dict(converted, strict=True)
    assert_features_match(model, state, 101, 'bcn', eps_inside_sqrt=True, batch_part='bn')


@pytest.mark.parametrize('batch_part', ['pbn', 'bn'])
def test_bcn_step_counters_come_from_the_source(tmp_path, batch_part):
    """Each BCN of the initialized backbone holds its own source norm's step counter (distinct
    per layer here), so loaded estimates count as trained ones."""
    state = make_torchvision_source(18, 'bcn', batch_part)
    counters = {key[:-len(f'.{batch_part}.num_batches_tracked')]: 12345 + index
                for index, key in enumerate(k for k in state if k.endswith('num_batches_tracked'))}
    for source_norm, steps in counters.items():
        state[f'{source_norm}.{batch_part}.num_batches_tracked'] = torch.tensor(steps)
    src, out = tmp_path / 'rn18_bcn_ws.pth', tmp_path / 'converted.pth'
    torch.save(state, src)
    report = convert_checkpoint(src, out)
    model = build_backbone('mmdet', 18, report.to_meta(),
                           init_cfg=dict(type='Pretrained', checkpoint=str(out)))
    model.init_weights()

    norms = {name: module for name, module in model.named_modules()
             if hasattr(module, 'num_batches_tracked')}
    assert len(norms) == len(counters) == 20  # stem, 16 in blocks, 3 downsample
    for source_norm, steps in counters.items():
        # torchvision `bnK` is mmdet's `bcnK`; `downsample.1` keeps its name
        target = re.sub(r'(^|\.)bn(\d)$', r'\1bcn\2', source_norm)
        assert int(norms[target].num_batches_tracked) == steps, source_norm


def test_gn_ws_r18_torchvision_to_mmdet():
    state = make_torchvision_source(18, 'gn')
    converted, report = convert_state_dict(state)
    assert report.complete and report.layout == 'torchvision-gn'
    assert report.conv_cfg == {'type': 'mmws.ConvWS'}
    assert report.norm_cfg == {'type': 'GN', 'num_groups': 32, 'requires_grad': True}
    model = build_backbone('mmdet', 18, report.to_meta())
    model.load_state_dict(converted, strict=True)
    assert_features_match(model, state, 18, 'gn', eps_inside_sqrt=False)


def test_converted_file_as_mmseg_deeplabv3_pretrained(tmp_path):
    """mmseg's DeepLabV3 with the 7x7-stem ``ResNet`` (not ``ResNetV1c``) and
    ``pretrained=<converted file>``: the dilated backbone gets every tensor."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    src, out = tmp_path / 'src.pth', tmp_path / 'r18_bcn_ws.pth'
    torch.save(make_torchvision_source(18, 'bcn'), src)
    report = convert_checkpoint(src, out)
    config = tmp_path / 'deeplabv3.py'
    config.write_text(f"""
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmws'], allow_failed_imports=False)
model = dict(
    pretrained='{out}',
    backbone=dict(type='ResNet', depth=18, conv_cfg={report.conv_cfg!r},
                  norm_cfg={report.norm_cfg!r}),
    decode_head=dict(in_channels=512, channels=64, norm_cfg={report.norm_cfg!r}),
    auxiliary_head=dict(in_channels=256, channels=64, norm_cfg={report.norm_cfg!r}))
""")
    cfg = Config.fromfile(str(config))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    model.init_weights()
    converted, _ = load_converted(out)
    backbone = model.backbone.state_dict()
    assert backbone.keys() == converted.keys()
    assert all(torch.equal(backbone[k], v) for k, v in converted.items())


def test_gn_ws_r50_detectron_pkl_to_mmdet(tmp_path):
    blobs, state = make_detectron_source(50)
    src = tmp_path / 'R-50-GN-WS.pkl'
    with src.open('wb') as f:
        pickle.dump(blobs, f, protocol=2)
    out = tmp_path / 'converted.pth'
    report = convert_checkpoint(src, out)
    assert report.complete and report.layout == 'detectron-gn' and report.depth == 50
    assert set(report.dropped.values()) == {'ImageNet classifier', 'optimizer state'}
    converted, meta = load_converted(out)
    model = build_backbone('mmdet', 50, meta)
    model.load_state_dict(converted, strict=True)
    assert_features_match(model, state, 50, 'gn', eps_inside_sqrt=False)


def test_every_problem_is_reported_and_nothing_written(tmp_path):
    state = make_torchvision_source(18, 'bcn', 'pbn')
    state['layer1.0.bn1.pbn.extra_buffer'] = torch.zeros(64)  # leftover: no rule
    state['layer4.1.bn2.bn.weight'] = torch.ones(512)  # leftover: duplicate target
    state['layer2.0.conv2.weight'] = torch.zeros(128, 128, 1, 1)  # shape mismatch
    del state['layer3.1.bn1.pbn.running_var']  # missing target
    with pytest.raises(ConversionError) as error:
        convert_state_dict(state)
    message = str(error.value)
    for key in ('layer1.0.bn1.pbn.extra_buffer', 'layer4.1.bn2.bn.weight',
                'layer2.0.conv2.weight', 'layer3.1.bcn1.running_var', 'INCOMPLETE'):
        assert key in message

    _, report = convert_state_dict(state, allow_partial=True)
    assert set(report.leftover) == {'layer1.0.bn1.pbn.extra_buffer', 'layer4.1.bn2.bn.weight'}
    assert 'already filled from layer4.1.bn2.pbn.weight' in report.leftover[
        'layer4.1.bn2.bn.weight']
    assert list(report.shape_errors) == ['layer2.0.conv2.weight']
    assert report.missing == ['layer2.0.conv2.weight', 'layer3.1.bcn1.running_var']

    src, out = tmp_path / 'src.pth', tmp_path / 'out.pth'
    torch.save(state, src)
    assert runpy.run_path(str(TOOL))['main']([str(src), str(out)]) == 1
    assert not out.exists()
    assert runpy.run_path(str(TOOL))['main']([str(src), str(out), '--allow-partial']) == 0
    assert load_converted(out)[1]['missing'] == report.missing


def test_cli_converts_and_prints_configs(tmp_path, capsys):
    src, out = tmp_path / 'src.pth', tmp_path / 'out' / 'r18.pth'
    torch.save(make_torchvision_source(18, 'gn'), src)
    assert runpy.run_path(str(TOOL))['main']([str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "conv_cfg={'type': 'mmws.ConvWS'}" in printed and 'complete' in printed
    assert load_converted(out)[1]['depth'] == 18


def _as_batchnorm_resnet(state):
    """A plain BN ResNet: the batch part's tensors directly under ``bnK``."""
    return {k.replace('.pbn.', '.'): v for k, v in state.items()
            if '.pbn.' in k or not re.search(r'(bn\d|downsample\.1)\.(weight|bias)$', k)}


def _with_16_groups_in_one_norm(state):
    return dict(state, **{'layer2.0.bn1.weight': torch.ones(1, 16, 1),
                          'layer2.0.bn1.bias': torch.zeros(1, 16, 1)})


@pytest.mark.parametrize('edit, message', [
    (_as_batchnorm_resnet, 'BatchNorm ResNet'),
    (_with_16_groups_in_one_norm, r'different group counts \[16, 32\]'),
    (lambda s: {k: v for k, v in s.items() if not k.startswith('layer3.1.')}, 'ResNet depth'),
    (lambda s: {'encoder.' + k: v for k, v in s.items()}, 'unknown checkpoint layout'),
])
def test_unconvertible_sources_are_refused(edit, message):
    with pytest.raises(ConversionError, match=message):
        convert_state_dict(edit(make_torchvision_source(18, 'bcn', 'pbn')))


def test_unknown_layout_name_is_refused():
    with pytest.raises(ConversionError, match="got 'caffe'"):
        convert_state_dict({}, layout='caffe')


def test_training_checkpoint_is_named_with_what_to_do(tmp_path, capsys):
    from mmengine.logging import HistoryBuffer
    state = {f'backbone.{k}': v for k, v in make_torchvision_source(18, 'gn').items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(2, 8, 1, 1)
    src, out = tmp_path / 'iter_300.pth', tmp_path / 'out.pth'
    torch.save({'meta': {'iter': 300}, 'state_dict': state, 'optimizer': {'state': {}},
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}}}, src)
    assert runpy.run_path(str(TOOL))['main']([str(src), str(out)]) == 1
    error = capsys.readouterr().err
    assert f'{src} is an MMEngine training checkpoint' in error
    assert 'model parts backbone, decode_head' in error and 'needs no conversion' in error
    assert f"load_from='{src}'" in error and "prefix='backbone.'" in error
    assert not out.exists()


@pytest.mark.parametrize('suffix', ['.pth', '.pkl'])
def test_garbage_source_is_named(tmp_path, capsys, suffix):
    src, out = tmp_path / f'src{suffix}', tmp_path / 'out.pth'
    src.write_text('garbage\n')
    assert runpy.run_path(str(TOOL))['main']([str(src), str(out)]) == 1
    error = capsys.readouterr().err
    assert str(src) in error and 'expected' in error
    assert 'weights_only=False will likely succeed' not in error and not out.exists()
