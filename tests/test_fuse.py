"""``mmws.fuse``: WS/BCN folded into plain layers give the same outputs, and export to ONNX
(``mmws.export``) with dynamic batch and size, checked against the unfused model.

Models are built from mmdet's / mmseg's own configs with BCN+WS deltas, at small depth and
image size, with every norm's parameters and estimates randomized so the folding is not the
identity.
"""
import copy
import os
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.registry import MODELS, DefaultScope
from torch import nn

from mmws import BCN, ConvWS
from mmws.export import check_onnx, export_onnx
from mmws.fuse import ChannelAffine, fuse

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'fuse_model.py'
WS_BCN = ("custom_imports = dict(imports=['mmws'], allow_failed_imports=False)\n"
          "conv_cfg = dict(type='mmws.ConvWS')\n"
          "norm_cfg = dict(type='mmws.BCN', num_groups=32)\n")
MASK_RCNN = WS_BCN + """
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(depth=18, conv_cfg=conv_cfg, norm_cfg=norm_cfg, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg),
        mask_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=30),
                  rcnn=dict(score_thr=0.0, max_per_img=10, mask_thr_binary=-1)))
"""
DEEPLABV3 = WS_BCN + """
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'
model = dict(
    pretrained=None,
    backbone=dict(depth=18, conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, conv_cfg=conv_cfg, norm_cfg=norm_cfg))
"""


def write_config(tmp_path, text, name):
    path = tmp_path / f'{name}.py'
    path.write_text(text)
    return str(path)


def build(config, seed=0):
    """The config's model with conv weights initialized from ``seed`` (a reproducible test:
    the fp32 gap between fused and original outputs depends on the weights)."""
    cfg = Config.fromfile(config)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return MODELS.build(cfg.model)


def randomize(model, seed=0):
    """Random norm affines and BCN estimates (the defaults would make BCN's batch part the
    identity); convs keep their random init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):  # BCN included
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, BCN):
                c = module.num_channels
                module.bn_weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                module.bn_bias.copy_(0.3 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    model.eval()
    return model


def assert_within(actual, expected, tol=1e-5):
    """``max |actual - expected| <= tol * max(1, max |expected|)``."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    diff = float((actual.double() - expected.double()).abs().max()) if expected.numel() else 0.
    assert actual.shape == expected.shape and diff <= tol * scale, (diff, scale)


def assert_fully_fused(model):
    kinds = {type(m) for m in model.modules()}
    assert not kinds & {BCN, ConvWS, ChannelAffine}, kinds


def test_fold_is_exact_in_float64_and_covers_every_place():
    conv_module_cls = __import__('mmcv.cnn', fromlist=['ConvModule']).ConvModule
    model = nn.Sequential(
        ConvWS(3, 64, 3, bias=False, eps_inside_sqrt=True), BCN(64), nn.ReLU(),  # folded
        BCN(64),  # after a ReLU: ChannelAffine + GroupNorm
        conv_module_cls(64, 64, 3, conv_cfg=dict(type='mmws.ConvWS'), bias=True,
                        norm_cfg=dict(type='mmws.BCN', num_groups=16)),  # ConvModule: folded
        conv_module_cls(64, 64, 1, conv_cfg=dict(type='mmws.ConvWS'), order=('norm', 'conv',
                                                                            'act'),
                        norm_cfg=dict(type='mmws.BCN', num_groups=16)),  # norm first
        nn.Conv2d(64, 64, 1), BCN(64),  # plain conv: folded
        ConvWS(64, 8, 3, bias=True, unbiased=False))  # WS only: plain conv
    randomize(model).double()
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        fused = fuse(copy.deepcopy(model))
        actual = fused(x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    assert [type(m) for m in fused[:4]] == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.Sequential]
    assert isinstance(fused[3][0], ChannelAffine)
    assert isinstance(fused[4].conv, nn.Conv2d) and isinstance(fused[4].norm, nn.GroupNorm)
    assert isinstance(fused[5].norm, nn.Sequential) and type(fused[5].conv) is nn.Conv2d
    assert fused[0].bias is not None and type(fused[8]) is nn.Conv2d
    assert not any(isinstance(m, (BCN, ConvWS)) for m in fused.modules())


def test_conv_with_hooks_or_other_subclasses_is_not_folded():
    from mmcv.cnn.bricks.conv_ws import ConvWS2d  # standardizes in its own forward
    model = randomize(nn.Sequential(ConvWS2d(3, 32, 3), BCN(32)))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        fused = fuse(model)
        assert_within(fused(x), expected)
    assert isinstance(fused[0], ConvWS2d) and isinstance(fused[1][0], ChannelAffine)


def _det_inputs(size=128):
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                batch_input_shape=(size, size), scale_factor=(1.0, 1.0))
    inputs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    return inputs, [DetDataSample(metainfo=meta)]


def test_mask_rcnn_predict_unchanged(tmp_path):
    model = randomize(build(write_config(tmp_path, MASK_RCNN, 'mask_rcnn')))
    inputs, samples = _det_inputs()
    fused = fuse(copy.deepcopy(model))
    assert_fully_fused(fused)
    with torch.no_grad():
        expected = model.predict(inputs, copy.deepcopy(samples), rescale=False)[0].pred_instances
        actual = fused.predict(inputs, copy.deepcopy(samples), rescale=False)[0].pred_instances
        assert len(expected) == 10
        assert torch.equal(actual.labels, expected.labels)
        assert_within(actual.bboxes, expected.bboxes)
        assert_within(actual.scores, expected.scores)
        # mask_thr_binary=-1: masks are probabilities quantized to uint8 (x 255)
        assert (actual.masks.int() - expected.masks.int()).abs().max() <= 1
        rois = torch.cat([expected.bboxes.new_zeros(10, 1), expected.bboxes], 1)
        mask_logits = [m.roi_head._mask_forward(m.extract_feat(inputs), rois)['mask_preds']
                       for m in (model, fused)]
        assert_within(mask_logits[1], mask_logits[0])
        features = model.extract_feat(inputs)

    # Backbone + neck of the fused detector in onnxruntime (its tensor mode needs metas),
    # against the unfused detector, at the export shape and another batch and size.
    path = str(tmp_path / 'mask_rcnn.onnx')
    export_onnx(fused, inputs, path, output='features')
    other = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(4))
    checks = check_onnx(path, model, [inputs, other], output='features')
    assert [check.shape for check in checks] == [(1, 3, 128, 128), (2, 3, 96, 160)]
    for check in checks:
        assert len(check.errors) == 5 and check.relative_error() <= 1e-5
    assert [scale for _, scale in checks[0].errors] == pytest.approx(
        [float(feature.abs().max()) for feature in features], rel=1e-5)


def test_deeplabv3_logits_unchanged(tmp_path):
    model = randomize(build(write_config(tmp_path, DEEPLABV3, 'deeplabv3')))
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64))] * 2
    fused = fuse(copy.deepcopy(model))
    assert_fully_fused(fused)
    assert type(fused.backbone.stem[0]) is nn.Conv2d  # deep stem: Sequential folding
    with torch.no_grad():
        assert_within(fused.encode_decode(inputs, metas), model.encode_decode(inputs, metas))
        assert_within(fused.auxiliary_head(fused.extract_feat(inputs)),
                      model.auxiliary_head(model.extract_feat(inputs)))


TOY_TEST_SET = """
test_dataloader = dict(dataset=dict(
    _delete_=True, type='mmws_toy.ToyVOCDataset', data_root={root!r},
    spec=dict(num_train=1, num_val=2, size=(64, 64)), ann_file='ImageSets/Segmentation/val.txt',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'), pipeline=[]))
"""


def trained_checkpoint(model, path):
    """A training checkpoint of ``model``: besides tensors, the message hub's HistoryBuffer
    (which plain ``torch.load(weights_only=True)`` refuses)."""
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1},
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}}}, path)
    return str(path)


def test_tool_writes_fused_checkpoint_and_dynamic_onnx(tmp_path, capsys, monkeypatch):
    """The ONNX file takes any batch and size, and is checked against the unfused model on the
    config's toy test images at 2 sizes x 2 batch sizes."""
    import onnxruntime
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    config = write_config(tmp_path, DEEPLABV3 + TOY_TEST_SET.format(root=str(tmp_path / 'voc')),
                          'deeplabv3')
    model = randomize(build(config))
    checkpoint = trained_checkpoint(model, tmp_path / 'trained.pth')
    fused_path, onnx_path = tmp_path / 'fused.pth', tmp_path / 'deeplabv3.onnx'
    tool = runpy.run_path(str(TOOL))
    assert tool['main']([config, checkpoint, '--out', str(fused_path), '--onnx',
                         str(onnx_path), '--shape', '1', '3', '64', '64']) == 0
    printed = capsys.readouterr().out
    for shape in ('1x3x64x64', '2x3x64x64', '1x3x96x128', '2x3x96x128'):
        assert f'{shape}: output0 max |onnx - reference|' in printed, printed
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ

    # The fused state dict loads strictly into a fused model built from the config.
    rebuilt = fuse(build(config))
    rebuilt.load_state_dict(torch.load(fused_path)['state_dict'], strict=True)
    # A third shape, not among the checked ones: onnxruntime against the unfused model.
    inputs = torch.randn(3, 3, 32, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model.decode_head(model.extract_feat(inputs))
        assert_within(rebuilt.decode_head(rebuilt.extract_feat(inputs)), expected)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    (actual, ) = session.run(None, {'inputs': inputs.numpy()})
    assert_within(torch.from_numpy(actual), expected)

    # --static: the file takes the --shape batch only; the check runs at that shape.
    static_path = tmp_path / 'static.onnx'
    assert tool['main']([config, checkpoint, '--onnx', str(static_path), '--static',
                         '--shape', '1', '3', '64', '64']) == 0
    assert capsys.readouterr().out.count('max |onnx - reference|') == 1
    session = onnxruntime.InferenceSession(str(static_path), providers=['CPUExecutionProvider'])
    with pytest.raises(Exception, match='(?i)dimension|shape'):
        session.run(None, {'inputs': inputs[:2, :, :, :64].numpy()})


def test_tool_fails_a_check_beyond_its_tolerance(tmp_path, capsys):
    """Fused and unfused differ by rounding: a tolerance of 0 fails the check."""
    config = write_config(tmp_path, DEEPLABV3, 'deeplabv3')
    checkpoint = trained_checkpoint(randomize(build(config)), tmp_path / 'trained.pth')
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), (np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3))
    tool = runpy.run_path(str(TOOL))
    args = [config, checkpoint, '--onnx', str(tmp_path / 'm.onnx'), '--shape', '1', '3', '32',
            '32', '--check-images', str(image)]
    assert tool['main'](args + ['--tolerance', '0']) == 1
    assert 'differs from the unfused model' in capsys.readouterr().err
