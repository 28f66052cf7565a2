"""The authors' VOC recipe configs (``configs/deeplabv3/*-authors_*``) and ``mmws.DeepLabV3Head``.

Every config builds and states the recipe (16 images per step, SGD 0.007 poly 0.9 for 33,100
iterations, 513 crops, no aux head, no photometric distortion); the backbone's output stride is
measured (R-50 on a 513 input); each BCN has its config's mode; one train and one predict step
run per norm at a tiny crop; two gloo processes show a sync config's BCN normalizing with the
statistics of both processes' images.
"""
import glob
import os
import os.path as osp
import re
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from torch import nn

from mmws import BCN, ConvWS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs', 'deeplabv3')
CONFIGS = sorted(glob.glob(osp.join(CONFIG_DIR, 'deeplabv3_r*-d16-authors_*.py')))
NAME = re.compile(r'deeplabv3_r(50|101)-d16-authors_(syncbn|gn-ws|bcn-ws-sync|bcn-ws-batch)_'
                  r'(16xb1|8xb2)-33k_voc12aug-513x513')
TINY = (65, 65)  # 65 = 4 x 16 + 1: the feature map is 5 x 5 at output stride 16


def config_path(depth, norm, layout):
    return osp.join(CONFIG_DIR, f'deeplabv3_r{depth}-d16-authors_{norm}_{layout}-33k_'
                    'voc12aug-513x513.py')


def load(path, crop=None):
    """The config at ``path`` without pretrained weights, optionally padded to ``crop``."""
    cfg = Config.fromfile(path)
    cfg.model.pretrained = None
    if crop is not None:
        cfg.model.data_preprocessor.size = crop
        cfg.model.data_preprocessor.test_cfg = dict(size=crop)
    return cfg


def build(cfg):
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


def batch(num_images, shape, seed=0, num_classes=21):
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.randint(0, 256, (3, *shape), generator=generator, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape))
        labels = torch.randint(0, num_classes, (1, *shape), generator=generator)
        labels[:, :2] = 255  # ignored pixels, as VOC's outlines
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_the_recipe_has_every_norm_layout_and_depth():
    found = {NAME.fullmatch(osp.basename(path)[:-3]).groups() for path in CONFIGS}
    expected = {(depth, norm, layout) for depth in ('50', '101')
                for norm in ('syncbn', 'gn-ws', 'bcn-ws-sync') for layout in ('16xb1', '8xb2')}
    expected |= {('50', 'bcn-ws-batch', '8xb2'), ('101', 'bcn-ws-batch', '8xb2')}
    assert found == expected and len(CONFIGS) == 14


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.basename(p)[:-3])
def test_config_states_the_authors_recipe_and_builds(path):
    depth, norm, layout = NAME.fullmatch(osp.basename(path)[:-3]).groups()
    cfg = Config.fromfile(path)
    pretrained, cfg.model.pretrained = cfg.model.pretrained, None
    assert pretrained == {'syncbn': f'torchvision://resnet{depth}',
                          'gn-ws': f'open-mmlab://jhu/resnet{depth}_gn_ws'}.get(
                              norm, f'checkpoints/resnet{depth}_bcn_ws.pth')
    gpus, images = (int(v) for v in layout.split('xb'))
    assert gpus * images == 16 and cfg.train_dataloader.batch_size == images
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.007, momentum=0.9,
                                               weight_decay=1e-4)
    assert 'paramwise_cfg' not in cfg.optim_wrapper and cfg.auto_scale_lr.enable is False
    [poly] = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == (
        'PolyLR', 0.9, 0.0, 0, 33100, False)
    assert cfg.train_cfg.max_iters == 33100
    datasets = cfg.train_dataloader.dataset.datasets
    assert [d.data_prefix.seg_map_path for d in datasets] == ['SegmentationClass',
                                                              'SegmentationClassAug']
    assert datasets[0].pipeline == datasets[1].pipeline
    pipeline = {t.type: t for t in datasets[0].pipeline}
    assert list(pipeline) == ['LoadImageFromFile', 'LoadAnnotations', 'RandomResize',
                              'RandomCrop', 'RandomFlip', 'PackSegInputs']
    assert pipeline['RandomResize'].ratio_range == (0.5, 2.0)
    assert tuple(pipeline['RandomCrop'].crop_size) == (513, 513)
    assert [t.type for t in cfg.val_dataloader.dataset.pipeline] == [
        'LoadImageFromFile', 'LoadAnnotations', 'PackSegInputs']
    assert tuple(cfg.model.data_preprocessor.size) == (513, 513)
    assert tuple(cfg.model.data_preprocessor.test_cfg.size) == (513, 513)
    head = cfg.model.decode_head
    assert cfg.model.auxiliary_head is None
    assert (head.type, tuple(head.dilations), head.channels, head.projection_kernel_size,
            head.dropout_ratio, head.align_corners) == (
                'mmws.DeepLabV3Head', (1, 6, 12, 18), 256, 1, 0, True)
    assert head.loss_decode.avg_non_ignore is True
    assert cfg.model.backbone.type == 'ResNet' and cfg.model.backbone.depth == int(depth)
    if depth == '101':
        # The R-101 config is its R-50 config but for the depth and the ImageNet weights: the
        # R-50 case builds it (lean CI), the test below once at depth 101.
        r50 = Config.fromfile(path.replace('r101-d16', 'r50-d16'))
        r50.model.pretrained = None
        cfg.model.backbone.depth = 50
        assert cfg.to_dict() == r50.to_dict()
        return

    model = build(cfg)
    backbone = model.backbone
    assert backbone.conv1.kernel_size == (7, 7) and backbone.conv1.stride == (2, 2)
    # Output stride 16: layer4 keeps layer3's resolution, its first block at dilation 1.
    assert backbone.layer3[0].conv2.stride == (2, 2) and backbone.layer4[0].conv2.stride == (1, 1)
    assert backbone.layer4[0].conv2.dilation == (1, 1)
    assert {block.conv2.dilation for block in list(backbone.layer4)[1:]} == {(2, 2)}
    rates = [m.conv.dilation for m in model.decode_head.aspp_modules]
    assert rates == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert model.decode_head.aspp_modules[0].conv.kernel_size == (1, 1)
    assert model.decode_head.bottleneck.conv.kernel_size == (1, 1)
    assert model.decode_head.dropout is None
    norms = [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm,
                                                          nn.GroupNorm))]
    convs = [m for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and not name.endswith('conv_seg')]
    assert len(norms) == len(convs)
    if norm == 'syncbn':
        assert all(isinstance(m, nn.SyncBatchNorm) for m in norms)
        assert {type(m) for m in convs} == {nn.Conv2d}
        assert {m.momentum for m in backbone.modules() if m in norms} == {0.05}
        assert {m.momentum for m in model.decode_head.modules() if m in norms} == {0.0003}
    else:
        assert {type(m) for m in convs} == {ConvWS}
        assert {m.eps_inside_sqrt for m in convs} == {norm.startswith('bcn')}
        if norm == 'gn-ws':
            assert {type(m) for m in norms} == {nn.GroupNorm}
            assert {(m.num_groups, m.eps) for m in norms} == {(32, 1e-5)}
        else:
            assert {type(m) for m in norms} == {BCN}
            assert {(m.mode, m.momentum, m.num_groups) for m in norms} == {
                (norm.split('-')[-1], 0.1, 32)}


def test_the_r101_configs_build_at_depth_101():
    model = build(load(config_path(101, 'gn-ws', '16xb1')))
    assert [len(layer) for layer in (model.backbone.layer1, model.backbone.layer2,
                                     model.backbone.layer3, model.backbone.layer4)] == [3, 4, 23, 3]


def test_backbone_output_stride_is_16_on_a_513_input():
    cfg = load(config_path(50, 'syncbn', '16xb1'))
    model = build(cfg).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 513, 513))
    # The authors' 513 crops give 33 x 33 features: (513 - 1) / 16 + 1.
    assert [tuple(f.shape[2:]) for f in features] == [(129, 129), (65, 65), (33, 33), (33, 33)]
    assert features[-1].shape[1] == 2048


@pytest.mark.parametrize('norm', ['syncbn', 'gn-ws', 'bcn-ws-sync', 'bcn-ws-batch'])
def test_one_train_and_one_predict_step(norm):
    """R-50 on the CPU, 2 images per step, a 65 x 65 pad: a non-distributed run, where SyncBN
    and sync BCN compute the statistics of this process's 2 images."""
    from mmengine.model import revert_sync_batchnorm
    torch.manual_seed(0)
    cfg = load(config_path(50, norm, '8xb2'), crop=TINY)
    model = revert_sync_batchnorm(build(cfg))
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    before = model.decode_head.conv_seg.weight.detach().clone()
    losses = model.train_step(batch(2, (60, 52)), optim_wrapper)
    assert set(losses) == {'loss', 'decode.loss_ce', 'decode.acc_seg'}
    assert torch.isfinite(losses['loss'])
    assert not torch.equal(before, model.decode_head.conv_seg.weight)
    model.eval()
    with torch.no_grad():
        [output] = model.test_step(batch(1, (50, 61), seed=1))
    # Padded to 65 x 65 for the network, cropped back to the image for the prediction.
    assert output.pred_sem_seg.data.shape == (1, 50, 61)
    assert output.seg_logits.data.shape == (21, 50, 61)


def test_random_scale_and_crop_of_the_training_pipeline():
    """A 375 x 500 VOC image: scaled by 0.5-2.0 (long side 250-1000), cropped to at most 513."""
    init_default_scope('mmseg')
    from mmseg.registry import TRANSFORMS
    cfg = load(config_path(50, 'gn-ws', '8xb2'))
    transforms = [TRANSFORMS.build(t) for t in cfg.train_dataloader.dataset.datasets[0].pipeline
                  if t.type in ('RandomResize', 'RandomCrop', 'RandomFlip')]
    np.random.seed(0)
    resized, cropped = [], []
    for _ in range(50):
        results = dict(img=np.zeros((375, 500, 3), np.uint8), img_shape=(375, 500),
                       ori_shape=(375, 500), gt_seg_map=np.zeros((375, 500), np.uint8),
                       seg_fields=['gt_seg_map'])
        results = transforms[0](results)
        resized.append(results['img'].shape[:2])
        for transform in transforms[1:]:
            results = transform(results)
        cropped.append(results['img'].shape[:2])
        assert results['img'].shape[:2] == results['gt_seg_map'].shape
    factors = [w / 500 for _, w in resized]
    assert all(abs(h / 375 - f) < 0.01 for (h, _), f in zip(resized, factors))
    assert 0.5 <= min(factors) < 0.7 and 1.8 < max(factors) <= 2.0
    assert all(h == min(rh, 513) and w == min(rw, 513)
               for (h, w), (rh, rw) in zip(cropped, resized))


def test_deeplabv3_head_projection_against_the_equations():
    """``mmws.DeepLabV3Head`` with a 1x1 projection, recomputed from its weights with torch's
    functional ops (BN in eval mode: its running statistics)."""
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    head = MODELS.build(dict(
        type='mmws.DeepLabV3Head', in_channels=8, channels=4, dilations=(1, 2, 3),
        num_classes=3, dropout_ratio=0, norm_cfg=dict(type='BN'), align_corners=True))
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    head.eval()
    x = torch.randn(2, 8, 7, 6)

    def conv_bn_relu(module, inp):
        conv, bn = module.conv, module.bn
        out = F.conv2d(inp, conv.weight, None, 1, conv.padding, conv.dilation)
        out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                           bn.eps)
        return out.clamp_min(0)

    pooled = conv_bn_relu(head.image_pool[1], x.mean(dim=(2, 3), keepdim=True))
    branches = [pooled.expand(-1, -1, 7, 6)] + [conv_bn_relu(m, x) for m in head.aspp_modules]
    projected = conv_bn_relu(head.bottleneck, torch.cat(branches, dim=1))
    expected = F.conv2d(projected, head.conv_seg.weight, head.conv_seg.bias)
    with torch.no_grad():
        torch.testing.assert_close(head([x]), expected, rtol=1e-5, atol=1e-5)
    assert head.bottleneck.conv.kernel_size == (1, 1) and head.bottleneck.conv.padding == (0, 0)


def test_deeplabv3_head_with_a_3x3_projection_is_mmsegs_aspp_head():
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    kwargs = dict(in_channels=8, channels=4, dilations=(1, 2), num_classes=3,
                  norm_cfg=dict(type='GN', num_groups=2))
    torch.manual_seed(0)
    ours = MODELS.build(dict(type='mmws.DeepLabV3Head', projection_kernel_size=3, **kwargs))
    torch.manual_seed(0)
    theirs = MODELS.build(dict(type='ASPPHead', **kwargs))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 8, 5, 5)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours([x]), theirs([x]))


@pytest.mark.parametrize('size', [0, 2, 1.0])
def test_deeplabv3_head_rejects_a_bad_projection_kernel(size):
    from mmws.models.deeplabv3_head import DeepLabV3Head
    with pytest.raises(ValueError, match=f'projection_kernel_size >= 1, got {size!r}'):
        DeepLabV3Head(projection_kernel_size=size, in_channels=8, channels=4, num_classes=3)


# Two processes, one image each, as 16xb1's GPUs: the sync config's BCNs normalize with the
# statistics of both images, so each process's logits are those of one process with both.
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _tiny_sync_model():
    """The R-50 BCN+WS sync config's model, same weights in every process, 65 x 65 pad, in
    float64 (the comparison is then exact up to 1e-10, not float32's summation order)."""
    torch.manual_seed(0)
    model = build(load(config_path(50, 'bcn-ws-sync', '16xb1'), crop=TINY))
    return model.double().train()


def _logits(model, data):
    data = model.data_preprocessor(data, True)
    return model.decode_head.forward(model.extract_feat(data['inputs'].double()))


def _worker(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        model = _tiny_sync_model()
        data = batch(WORLD_SIZE, TINY, seed=3)
        mine = dict(inputs=data['inputs'][rank:rank + 1],
                    data_samples=data['data_samples'][rank:rank + 1])
        logits = _logits(model, mine)
        bcns = [m for m in model.modules() if isinstance(m, BCN)]
        torch.save(dict(logits=logits.detach(),
                        stem_mean=model.backbone.bcn1.running_mean.clone(),
                        pool_mean=model.decode_head.image_pool[1].bcn.running_mean.clone(),
                        modes={m.mode for m in bcns}),
                   osp.join(result_dir, f'rank{rank}.pt'))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sync_config_normalizes_with_both_processes_images(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD_SIZE)]
    assert all(r['modes'] == {'sync'} for r in ranks)
    # One process holding both images: sync over one process is batch mode on the 2 images.
    model = _tiny_sync_model()
    with torch.no_grad():
        together = _logits(model, batch(WORLD_SIZE, TINY, seed=3))
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result['logits'], together[rank:rank + 1], rtol=1e-4,
                                   atol=1e-4)
        torch.testing.assert_close(result['stem_mean'], model.backbone.bcn1.running_mean)
        # The image-pool branch, one value per channel on each process, had two.
        torch.testing.assert_close(result['pool_mean'],
                                   model.decode_head.image_pool[1].bcn.running_mean)
    # One process with one image cannot train the sync config: its image-pool branch has one
    # value per channel. The two processes' branches had two.
    data = batch(WORLD_SIZE, TINY, seed=3)
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        _logits(model, dict(inputs=data['inputs'][:1], data_samples=data['data_samples'][:1]))
