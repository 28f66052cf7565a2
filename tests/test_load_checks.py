"""Loading a checkpoint that does not fit a WS/BCN model warns, naming the keys and the fix.

The checkpoints are faked from mmdet ResNets, whose BN layout is torchvision's (``bn1``,
``layerX.Y.bnK``, ``downsample.1``) and whose BCN/GN layout is what the converter writes.
"""
import re
import warnings

import pytest
import torch
from mmengine.registry import DefaultScope

from mmws.models.load_checks import (CheckpointMismatchWarning, check_bcn_state,
                                     check_conv_ws_state)

WS = dict(type='mmws.ConvWS')
BCN = dict(type='mmws.BCN', num_groups=32)
GN = dict(type='GN', num_groups=32, requires_grad=True)
BN = dict(type='BN', requires_grad=True)


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope():
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    DefaultScope.get_instance('test-load-checks', scope_name='mmdet')
    yield
    DefaultScope._instance_dict.pop('test-load-checks', None)


def resnet(conv_cfg=None, norm_cfg=BN, checkpoint=None):
    from mmdet.registry import MODELS
    init_cfg = dict(type='Pretrained', checkpoint=checkpoint) if checkpoint else None
    return MODELS.build(dict(type='ResNet', depth=18, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                             init_cfg=init_cfg))


def save_torchvision_bn_resnet(path):
    """A torchvision-style BN ResNet-18 checkpoint, classifier included."""
    torch.manual_seed(0)
    state = resnet().state_dict()
    state.update({'fc.weight': torch.randn(1000, 512), 'fc.bias': torch.zeros(1000)})
    torch.save(state, path)
    return str(path)


def mismatch_warnings(load):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        load()
    return [str(w.message) for w in caught if w.category is CheckpointMismatchWarning]


def test_bn_checkpoint_in_a_bcn_ws_resnet_warns_naming_the_keys_and_the_fix(tmp_path):
    model = resnet(WS, BCN, save_torchvision_bn_resnet(tmp_path / 'resnet18_bn.pth'))
    messages = mismatch_warnings(model.init_weights)
    bcn = [m for m in messages if m.startswith('mmws.BCN')]
    conv = [m for m in messages if m.startswith('mmws.ConvWS')]
    # Every BCN (stem, 16 block norms, 3 downsamples) and every conv beside a BN (stem, 16).
    assert len(bcn) == 20 and len(conv) == 17
    [stem] = [m for m in bcn if m.startswith("mmws.BCN 'bcn1.'")]
    assert 'bcn1.bn_weight' in stem and 'bcn1.running_var' in stem
    assert "BatchNorm tensors" in stem and "'bn1.'" in stem
    assert 'tools/convert_checkpoint.py' in stem and 'init_cfg=None, frozen_stages=-1' in stem
    [block] = [m for m in bcn if m.startswith("mmws.BCN 'layer2.0.bcn2.'")]
    assert "'layer2.0.bn2.'" in block
    # downsample.1 is a BN in the checkpoint: only BCN's batch-part affine is missing.
    [down] = [m for m in bcn if m.startswith("mmws.BCN 'layer2.0.downsample.1.'")]
    missing = re.search(r'missing (.*?);', down).group(1).split(', ')
    assert missing == ['layer2.0.downsample.1.bn_weight', 'layer2.0.downsample.1.bn_bias']
    assert any(m.startswith("mmws.ConvWS 'layer3.1.conv2.'") and "'layer3.1.bn2.'" in m
               for m in conv)


def test_bn_checkpoint_in_a_gn_ws_resnet_warns_for_the_convs(tmp_path):
    model = resnet(WS, GN, save_torchvision_bn_resnet(tmp_path / 'resnet18_bn.pth'))
    messages = mismatch_warnings(model.init_weights)
    assert len(messages) == 17 and all(m.startswith('mmws.ConvWS') for m in messages)
    assert 'trained without WS' in messages[0] and 'jhu/resnet50_gn_ws' in messages[0]


@pytest.mark.parametrize('norm_cfg', [BCN, GN, BN], ids=['bcn-ws', 'gn-ws', 'bn-ws'])
def test_a_checkpoint_of_the_same_model_loads_silently(tmp_path, norm_cfg):
    # BN+WS included: its BatchNorms take the BN statistics, so nothing says the convs were
    # trained without WS.
    torch.manual_seed(0)
    path = tmp_path / 'same.pth'
    torch.save(dict(state_dict=resnet(WS, norm_cfg).state_dict()), path)
    model = resnet(WS, norm_cfg, str(path))
    assert mismatch_warnings(model.init_weights) == []
    model.load_state_dict(torch.load(path)['state_dict'], strict=True)


def test_the_authors_unconverted_bcn_layout_is_named():
    state = {f'downsample.1.pbn.{key}': torch.ones(4) for key in ('weight', 'running_var')}
    with pytest.warns(CheckpointMismatchWarning, match='before conversion.*convert'):
        check_bcn_state(state, 'downsample.1.')
    unexpected = ['layer1.0.bn1.weight', 'layer1.0.bn1.pbn.running_var']
    with pytest.warns(CheckpointMismatchWarning,
                      match="layout before conversion at 'layer1.0.bn1.'"):
        check_bcn_state({}, 'layer1.0.bcn1.', unexpected)
    with warnings.catch_warnings():  # WS-trained convs: the ConvWS check stays silent
        warnings.simplefilter('error')
        check_conv_ws_state({'layer1.0.conv1.weight': torch.ones(1)}, 'layer1.0.conv1.',
                            unexpected)


def test_a_checkpoint_without_the_layer_points_at_the_prefix():
    with pytest.warns(CheckpointMismatchWarning, match="no tensors.*prefix='backbone.'"):
        check_bcn_state({'backbone.layer1.0.bcn1.weight': torch.ones(1)}, 'layer1.0.bcn1.',
                        ['backbone.layer1.0.bcn1.weight'])
