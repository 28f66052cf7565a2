"""Shipped segmentation configs: load, norm slots, one train and one predict step; inference.

GPU-scale configs are proven here by building them (at ResNet-18 depth where noted: every other
line of the config is kept) and running one step at a tiny crop.
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmws import BCN, ConvWS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# The authors' VOC recipe (`*-authors_*`) has its own tests: tests/test_paper_recipe.py.
GPU_CONFIGS = sorted(path for path in glob.glob(osp.join(REPO, 'configs', 'deeplabv3', '*.py'))
                     if '-authors_' not in path)
TOY_CONFIGS = sorted(glob.glob(osp.join(REPO, 'projects', 'toy', 'configs', '*voc*.py')))
TOY_BCN_WS = osp.join(REPO, 'projects', 'toy', 'configs',
                      'deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py')
CROP = (32, 32)
NORM_CLASSES = {'mmws.BCN': BCN, 'GN': nn.GroupNorm, 'BN': nn.BatchNorm2d, 'SyncBN': nn.BatchNorm2d}


def _name(path):
    return osp.basename(path)[:-3]


def load(path, shallow=False):
    """The config at ``path`` with a tiny crop, no pretrained file, and optionally ResNet-18."""
    cfg = Config.fromfile(path)
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = CROP
    if shallow and cfg.model.backbone.depth != 18:
        cfg.model.backbone.depth = 18
        cfg.model.decode_head.in_channels = 512
        cfg.model.auxiliary_head.in_channels = 256
    return cfg


def build(cfg):
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


def batch(num_images, num_classes, shape=CROP, seed=0):
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.randint(0, 256, (3, *shape), generator=generator, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        labels = torch.randint(0, num_classes, (1, *shape), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def norm_layers(model):
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (_BatchNorm, nn.GroupNorm))]


def conv_layers(model):
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and not name.endswith('conv_seg')]


def test_configs_are_found():
    assert len(GPU_CONFIGS) == 16 and len(TOY_CONFIGS) == 11


@pytest.mark.parametrize('path', GPU_CONFIGS + TOY_CONFIGS, ids=_name)
def test_config_declares_its_experiment(path):
    cfg = Config.fromfile(path)
    name = _name(path)
    assert cfg.default_scope == 'mmseg'
    # The toy configs also import the toy project's package (datasets), as mmdet projects do.
    imports = ['mmws', 'mmws_toy'] if path in TOY_CONFIGS else ['mmws']
    assert cfg.custom_imports == dict(imports=imports, allow_failed_imports=False)
    model = cfg.model
    slots = [model.backbone, model.decode_head, model.auxiliary_head]
    norm_type = {'bcn-ws': 'mmws.BCN', 'gn-ws': 'GN', 'gn': 'GN', 'bn': 'BN'}[name.split('_')[2]]
    assert {slot.norm_cfg.type for slot in slots} == {norm_type}
    conv_types = {(slot.get('conv_cfg') or {}).get('type') for slot in slots}
    assert conv_types == ({'mmws.ConvWS'} if name.split('_')[2].endswith('ws') else {None})
    gpus, images = (int(v) for v in name.split('_')[3].split('-')[0].split('xb'))
    assert cfg.train_dataloader.batch_size == images
    if path in GPU_CONFIGS:
        depth = int(name.split('_')[1].split('-')[0][1:])
        assert model.backbone.depth == depth
        assert cfg.auto_scale_lr.base_batch_size == gpus * images
        assert cfg.optim_wrapper.optimizer.lr == 0.01
        iters = int(name.split('_')[3].split('-')[1][:-1]) * 1000
        assert cfg.train_cfg.max_iters == iters
        assert cfg.param_scheduler[0].end == iters
        dataset, crop = name.split('_')[4].split('-')
        assert tuple(cfg.crop_size) == tuple(int(v) for v in crop.split('x'))
        assert model.decode_head.num_classes == {'voc12aug': 21, 'cityscapes': 19}[dataset]
        kind = 'bcn' if norm_type == 'mmws.BCN' else 'gn'
        assert str(depth) in model.pretrained and f'{kind}_ws' in model.pretrained
        # The authors' BCN+WS ImageNet weights standardize with sqrt(var + eps).
        assert model.backbone.conv_cfg.get('eps_inside_sqrt', False) == (kind == 'bcn')
    else:
        assert model.pretrained is None
        if 'toypre' in name:  # the toy classifier's 7x7 stem and its checkpoint
            assert model.backbone.type == 'ResNet'
            assert model.backbone.init_cfg == dict(
                type='Pretrained', prefix='backbone.',
                checkpoint=f'checkpoints/toy/resnet18_{name.split("_")[2]}_1xb32-toy_cls.pth')
        else:
            assert model.backbone.type == 'ResNetV1c'


@pytest.mark.parametrize('path', GPU_CONFIGS + TOY_CONFIGS, ids=_name)
def test_config_builds_and_runs_one_train_and_one_predict_step(path):
    cfg = load(path, shallow=True)
    model = build(cfg)
    norm_class = NORM_CLASSES[cfg.model.backbone.norm_cfg.type]
    conv_class = ConvWS if cfg.model.backbone.get('conv_cfg') else nn.Conv2d
    convs, norms = conv_layers(model), norm_layers(model)
    # Every conv (stem, blocks, downsample, ASPP with its image pool, FCN head) is followed by
    # a norm of the configured type; only the classifiers are plain convs without a norm.
    assert {type(m) for _, m in convs} == {conv_class}
    assert {type(m) for _, m in norms} == {norm_class}
    assert len(norms) == len(convs)
    assert isinstance(model.decode_head.image_pool[1].norm, norm_class)

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    losses = model.train_step(batch(cfg.train_dataloader.batch_size, 5), optim_wrapper)
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())

    model.eval()
    with torch.no_grad():
        outputs = model.test_step(batch(1, 5, seed=1))
    assert outputs[0].pred_sem_seg.data.shape == (1, *CROP)
    assert outputs[0].seg_logits.data.shape[0] == cfg.model.decode_head.num_classes


def test_paper_config_at_full_depth_runs_at_one_image_per_gpu():
    """R-101 BCN+WS, 1 image per GPU: the ASPP image pool sees one value per channel."""
    cfg = load(osp.join(REPO, 'configs', 'deeplabv3',
                        'deeplabv3_r101-d8_bcn-ws_16xb1-40k_voc12aug-512x512.py'))
    model = build(cfg)
    assert len(model.backbone.layer3) == 23
    assert isinstance(model.backbone.conv1, ConvWS) and isinstance(model.backbone.bcn1, BCN)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    losses = model.train_step(batch(1, 21), optim_wrapper)
    assert torch.isfinite(losses['loss'] if 'loss' in losses else losses['decode.loss_ce'])
    assert int(model.decode_head.image_pool[1].norm.num_batches_tracked) == 1


@pytest.fixture(scope='module')
def toy_model():
    """The toy BCN+WS model after a few training steps (non-trivial estimates), in eval mode."""
    torch.manual_seed(0)
    cfg = load(TOY_BCN_WS)
    model = build(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    for seed in range(3):
        model.train_step(batch(1, 5, seed=seed), optim_wrapper)
    return model.eval()


def _estimates(model):
    return {name: buffer.clone() for name, buffer in model.named_buffers()
            if 'running' in name or 'num_batches' in name}


def _logits(model, data, mode, crop=None):
    model.test_cfg = ConfigDict(mode=mode) if mode == 'whole' else ConfigDict(
        mode='slide', crop_size=crop, stride=(crop[0] * 2 // 3, crop[1] * 2 // 3))
    with torch.no_grad():
        outputs = model.test_step(data)
    return torch.stack([output.seg_logits.data for output in outputs])


def test_whole_and_sliding_window_inference_with_bcn_in_eval(toy_model):
    shape = (48, 64)
    data = batch(2, 5, shape=shape, seed=5)
    before = _estimates(toy_model)
    whole = _logits(toy_model, data, 'whole')
    assert whole.shape == (2, 5, *shape) and torch.isfinite(whole).all()
    # One window covering the image is whole-image inference.
    torch.testing.assert_close(_logits(toy_model, data, 'slide', crop=shape), whole)
    slide = _logits(toy_model, data, 'slide', crop=(32, 32))
    assert slide.shape == whole.shape and torch.isfinite(slide).all()
    assert not torch.allclose(slide, whole)  # windows see less context
    # In eval BCN normalizes with its estimates: each image's result is independent of the
    # batch it is in, and inference leaves the estimates untouched.
    for index in range(2):
        alone = dict(inputs=data['inputs'][index:index + 1],
                     data_samples=data['data_samples'][index:index + 1])
        torch.testing.assert_close(_logits(toy_model, alone, 'slide', crop=(32, 32))[0],
                                   slide[index], rtol=1e-4, atol=1e-4)
    after = _estimates(toy_model)
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_plain_bn_cannot_train_the_image_pool_at_one_image():
    """Why the toy BN run takes 2 images per GPU: BN sees one value per channel in ASPP's
    1x1 image-pool branch, which GN and micro-mode BCN handle (see the step test above)."""
    cfg = load(osp.join(REPO, 'projects', 'toy', 'configs', 'deeplabv3_r18-d16_bn_1xb2-toy_voc.py'))
    model = build(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        model.train_step(batch(1, 5), optim_wrapper)
