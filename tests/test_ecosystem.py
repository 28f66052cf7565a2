"""mmws layers inside MMEngine / mmcv / mmdet / mmseg: registries, builders, backbones."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn

import mmws
from mmws import BCN, ConvWS


@pytest.fixture(params=['mmdet', 'mmseg'])
def scope(request):
    import_name = {'mmdet': 'mmdet.models', 'mmseg': 'mmseg.models'}[request.param]
    __import__(import_name)
    name = f'test-scope-{request.param}'
    DefaultScope.get_instance(name, scope_name=request.param)
    yield request.param
    DefaultScope._instance_dict.pop(name, None)


def toolbox_models(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def test_build_from_toolbox_scopes(scope):
    from mmcv.cnn import ConvModule, build_conv_layer, build_norm_layer
    models = toolbox_models(scope)
    assert isinstance(models.build(dict(type='mmws.ConvWS', in_channels=3, out_channels=8,
                                        kernel_size=3)), ConvWS)
    assert isinstance(models.build(dict(type='mmws.BCN', num_features=64)), BCN)
    conv = build_conv_layer(dict(type='mmws.ConvWS', eps_inside_sqrt=True), 3, 8, 3)
    assert isinstance(conv, ConvWS) and conv.eps_inside_sqrt
    name, norm = build_norm_layer(dict(type='mmws.BCN', num_groups=8, momentum=0.05), 16, 2)
    assert name == 'bcn2' and isinstance(norm, BCN)
    assert (norm.num_groups, norm.momentum, norm.eps) == (8, 0.05, 1e-5)
    _, frozen = build_norm_layer(dict(type='mmws.BCN', num_groups=8, requires_grad=False), 16)
    assert not any(p.requires_grad for p in frozen.parameters())
    module = ConvModule(8, 32, 3, padding=1, conv_cfg=dict(type='mmws.ConvWS'),
                        norm_cfg=dict(type='mmws.BCN', num_groups=8))
    assert isinstance(module.conv, ConvWS) and isinstance(module.norm, BCN)
    assert module.conv.bias is None  # bias='auto' sees a norm layer
    assert module(torch.randn(1, 8, 6, 6)).shape == (1, 32, 6, 6)


def test_mmcv_root_conv_ws_untouched():
    from mmcv.cnn.bricks.conv_ws import ConvWS2d
    from mmengine.registry import MODELS
    assert MODELS.get('ConvWS') is ConvWS2d
    assert MODELS.get('mmws.ConvWS') is ConvWS
    assert mmws.registry.MODELS.scope == 'mmws'


def test_custom_imports_in_config(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['mmws'], allow_failed_imports=False)\n"
                        "default_scope = 'mmdet'\n"
                        "norm = dict(type='mmws.BCN', num_features=32)\n")
    cfg = Config.fromfile(str(cfg_file))
    from mmdet.registry import MODELS
    DefaultScope.get_instance('test-custom-imports', scope_name=cfg.default_scope)
    try:
        assert isinstance(MODELS.build(cfg.norm), BCN)
    finally:
        DefaultScope._instance_dict.pop('test-custom-imports', None)


def _ws_bcn_cfg(num_groups=32):
    return dict(conv_cfg=dict(type='mmws.ConvWS'),
                norm_cfg=dict(type='mmws.BCN', num_groups=num_groups, requires_grad=True))


@pytest.mark.parametrize('backbone', ['mmdet.ResNet', 'mmseg.ResNetV1c'])
def test_resnet50_forward_backward_at_batch_one(backbone):
    scope, type_name = backbone.split('.')
    __import__(f'{scope}.models')
    models = toolbox_models(scope)
    extra = dict(norm_eval=False, style='pytorch') if scope == 'mmdet' else dict(norm_eval=False)
    with DefaultScope.overwrite_default_scope(scope):  # whatever scope earlier tests left
        model = models.build(dict(type=type_name, depth=50, out_indices=(0, 1, 2, 3),
                                  **_ws_bcn_cfg(), **extra))
    model.init_weights()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert convs and all(isinstance(m, ConvWS) for m in convs)
    assert norms and all(isinstance(m, BCN) for m in norms)
    names = dict(model.named_modules())
    assert isinstance(names['layer1.0.bcn1'], BCN)
    assert isinstance(names['layer1.0.downsample.1'], BCN)
    model.train()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)
    assert all(int(m.num_batches_tracked) == 1 for m in norms)


def test_norm_decay_mult_covers_all_four_affines():
    from mmengine.optim import DefaultOptimWrapperConstructor
    model = nn.Sequential(ConvWS(3, 32, 3), BCN(32))
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        dict(norm_decay_mult=0.0))
    optim_wrapper = constructor(model)
    decay = {id(p): g['weight_decay'] for g in optim_wrapper.optimizer.param_groups
             for p in g['params']}
    bcn = model[1]
    for p in (bcn.weight, bcn.bias, bcn.bn_weight, bcn.bn_bias):
        assert decay[id(p)] == 0.0
    assert decay[id(model[0].weight)] == 1e-4


def test_sync_bn_conversion_leaves_bcn_intact():
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
    model = nn.Sequential(ConvWS(3, 32, 3), BCN(32), nn.BatchNorm2d(32))
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], BCN) and isinstance(converted[2], nn.SyncBatchNorm)
    assert isinstance(revert_sync_batchnorm(converted)[1], BCN)


def test_mmdet_norm_eval_leaves_bcn_training():
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=18, norm_eval=True, **_ws_bcn_cfg(num_groups=16))
    model.train()
    bcns = [m for m in model.modules() if isinstance(m, BCN)]
    assert bcns and all(m.training for m in bcns)  # documented: norm_eval acts on _BatchNorm
    model(torch.randn(1, 3, 32, 32))
    assert all(int(m.num_batches_tracked) == 1 for m in bcns)


def test_mmengine_initializers_treat_bcn_as_norm():
    from mmengine.model import constant_init, initialize
    bcn = BCN(32)
    with torch.no_grad():
        bcn.weight.fill_(5)
    initialize(bcn, dict(type='Constant', layer='GroupNorm', val=1, bias=0))
    assert torch.equal(bcn.weight, torch.ones(32))
    constant_init(bcn, 0)
    assert torch.equal(bcn.weight, torch.zeros(32))
    assert torch.equal(bcn.bn_weight, torch.ones(32))  # batch part keeps its own init
