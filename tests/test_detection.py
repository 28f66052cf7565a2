"""The detection configs: every shipped config loads, builds with WS/BCN in every norm slot,
and trains and predicts one step (at a tiny size, ResNet-18); BCN heads take zero RoIs."""
import copy
import functools
import glob
import json
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from torch import nn

from mmws import BCN, ConvWS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    glob.glob(osp.join(REPO, 'configs/mask_rcnn/*.py')) +
    glob.glob(osp.join(REPO, 'configs/faster_rcnn/*.py')) +
    glob.glob(osp.join(REPO, 'projects/toy/configs/*coco*.py')))
COCO_CONFIGS = [c for c in CONFIGS if '/toy/' not in c]
TOY_BCN = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')
IMAGE = 64


def name_of(path):
    return osp.splitext(osp.basename(path))[0]


@pytest.fixture(scope='module', autouse=True)
def parse_mmdet_model_index_once():
    """mmengine re-parses all of mmdet's ~400 metafile.yml for every `mmdet::` reference of a
    config (seconds each); the answer is fixed during the tests, so keep it per reference."""
    from mmengine.config import utils
    original = utils._get_cfg_metainfo
    answers = {}

    def cached(package_path, cfg_path):
        key = (package_path, cfg_path)
        if key not in answers:
            try:
                answers[key] = original(package_path, cfg_path)
            except ValueError as error:  # a `_base_` file: mmengine falls back on its path
                answers[key] = error
        if isinstance(answers[key], ValueError):
            raise answers[key]
        return answers[key]

    utils._get_cfg_metainfo = cached
    yield
    utils._get_cfg_metainfo = original


@functools.lru_cache(maxsize=None)
def _load(path):
    return Config.fromfile(path)


def load(path):
    return copy.deepcopy(_load(path))


@pytest.fixture(scope='module')
def mmdet_scope():
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    DefaultScope.get_instance('test-detection', scope_name='mmdet')
    yield
    DefaultScope._instance_dict.pop('test-detection', None)


def build(model_cfg, init=True):
    from mmdet.registry import MODELS
    model = MODELS.build(model_cfg)
    if init:
        model.init_weights()
    return model


def test_every_detection_config_is_shipped():
    names = {name_of(c) for c in COCO_CONFIGS}
    expected = {
        f'{model}_fpn_{norm}_8xb{batch}-{schedule}_coco'
        for norm in ('gn-ws', 'bcn-ws') for batch in (1, 2)
        for model, schedules in (('mask-rcnn_r50', ('1x', '2x', '20-23-24e')),
                                 ('mask-rcnn_r101', ('1x', '2x', '20-23-24e')),
                                 ('faster-rcnn_r50', ('1x', '2x')))
        for schedule in schedules
    }
    # The authors' Faster R-CNN R-101: 1 image per GPU, 1x.
    expected |= {f'faster-rcnn_r101_fpn_{norm}_8xb1-1x_coco' for norm in ('gn-ws', 'bcn-ws')}
    assert names == expected


# Epochs and lr milestones of each schedule in the config names: mmdet's 1x and 2x, and the
# authors' "2x" for Mask R-CNN (mmdet's gn+ws/*_20-23-24e).
SCHEDULES = {'1x': (12, [8, 11]), '2x': (24, [16, 22]), '20-23-24e': (24, [20, 23])}


@pytest.mark.parametrize('path', COCO_CONFIGS, ids=name_of)
def test_coco_config_settings_follow_its_name(path):
    cfg = load(path)
    name = name_of(path)
    batch, schedule = re.search(r'_8xb(\d)-(\dx|20-23-24e)_coco$', name).groups()
    assert cfg.custom_imports.imports == ['mmws']
    assert cfg.train_dataloader.batch_size == int(batch)
    # lr set for the total batch (8 GPUs x batch), linear rule via auto_scale_lr.
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.01 * int(batch))
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=8 * int(batch))
    epochs, milestones = SCHEDULES[schedule]
    assert cfg.train_cfg.max_epochs == epochs
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR', 500, False)
    assert (steps.type, steps.end, steps.milestones) == ('MultiStepLR', epochs, milestones)
    backbone = cfg.model.backbone
    assert backbone.depth == int(re.search(r'_r(\d+)_', name).group(1))
    checkpoint = backbone.init_cfg.checkpoint
    if 'bcn-ws' in name:
        assert checkpoint == f'checkpoints/resnet{backbone.depth}_bcn_ws.pth'
        assert cfg.model.backbone.conv_cfg == dict(type='mmws.ConvWS', eps_inside_sqrt=True)
    else:
        assert checkpoint == f'open-mmlab://jhu/resnet{backbone.depth}_gn_ws'
    slots = [cfg.model.backbone, cfg.model.neck, cfg.model.roi_head.bbox_head]
    if name.startswith('mask'):
        slots.append(cfg.model.roi_head.mask_head)
    norm = dict(type='mmws.BCN' if 'bcn-ws' in name else 'GN', num_groups=32,
                requires_grad=True)
    for slot in slots:
        assert slot.conv_cfg.type == 'mmws.ConvWS' and slot.norm_cfg == norm
    assert cfg.model.roi_head.bbox_head.type == 'Shared4Conv1FCBBoxHead'


# Convs the paper leaves plain: no normalization follows them.
PLAIN_CONVS = {'rpn_head.rpn_conv', 'rpn_head.rpn_cls', 'rpn_head.rpn_reg',
               'roi_head.mask_head.conv_logits'}


@pytest.mark.parametrize('norm', ['gn-ws', 'bcn-ws'])
@pytest.mark.parametrize('model', ['mask-rcnn', 'faster-rcnn'])
def test_ws_and_the_norm_fill_every_slot_of_the_full_model(mmdet_scope, model, norm):
    cfg = load(osp.join(REPO, f'configs/{model.replace("-", "_")}/'
                         f'{model}_r50_fpn_{norm}_8xb2-1x_coco.py'))
    net = build(cfg.model, init=False)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    plain = {n for n, m in convs.items() if not isinstance(m, ConvWS)}
    assert plain == (PLAIN_CONVS if model == 'mask-rcnn' else PLAIN_CONVS - {
        'roi_head.mask_head.conv_logits'})
    norm_types = (nn.GroupNorm, nn.modules.batchnorm._NormBase)
    norms = [m for m in net.modules() if isinstance(m, norm_types)]
    expected = BCN if norm == 'bcn-ws' else nn.GroupNorm
    assert all(type(m) is expected for m in norms)
    # One norm per WS conv: stem + 16 blocks' 3 convs + 4 downsamples + FPN 8 + heads 4 (+4).
    assert len(norms) == len(convs) - len(plain) == 1 + 48 + 4 + 8 + 4 + (
        4 if model == 'mask-rcnn' else 0)


def tiny(model_cfg):
    """The config's model at test size: ResNet-18, few proposals and RoIs, no pretraining."""
    model_cfg = copy.deepcopy(model_cfg)
    backbone = model_cfg.backbone
    if backbone.depth != 18:
        backbone.depth = 18
        model_cfg.neck.in_channels = [64, 128, 256, 512]
    backbone.init_cfg = None
    backbone.frozen_stages = -1
    model_cfg.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=50)
    model_cfg.train_cfg.rcnn.sampler.num = 16
    model_cfg.test_cfg.rpn.update(nms_pre=200, max_per_img=20)
    return model_cfg


def sample(num_objects, with_masks=True, seed=0):
    """A packed batch of one ``IMAGE``-pixel image with ``num_objects`` square objects."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.RandomState(seed)
    image = torch.from_numpy(rng.randint(0, 255, (3, IMAGE, IMAGE)).astype(np.uint8))
    boxes, masks = [], np.zeros((num_objects, IMAGE, IMAGE), dtype=np.uint8)
    for i in range(num_objects):
        x0, y0 = rng.randint(0, IMAGE // 2, 2)
        size = rng.randint(12, IMAGE // 2)
        boxes.append([x0, y0, x0 + size, y0 + size])
        masks[i, y0:y0 + size, x0:x0 + size] = 1
        image[:, y0:y0 + size, x0:x0 + size] = 255 * (i % 2)
    gt = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      labels=torch.arange(num_objects) % 4)
    if with_masks:
        gt.masks = BitmapMasks(masks, IMAGE, IMAGE)
    data_sample = DetDataSample(gt_instances=gt)
    data_sample.set_metainfo(dict(img_shape=(IMAGE, IMAGE), ori_shape=(IMAGE, IMAGE),
                                  scale_factor=(1.0, 1.0), pad_shape=(IMAGE, IMAGE),
                                  batch_input_shape=(IMAGE, IMAGE)))
    return dict(inputs=[image], data_samples=[data_sample])


def tiny_key(path):
    return json.dumps(tiny(load(path).model).to_dict(), sort_keys=True, default=str)


# One config per distinct model: the others differ from one of these only in data, batch size,
# schedule, depth, pretrained weights or hooks, which `tiny` replaces (the toy detectors: the
# from-scratch ones).
STEPPED = [
    osp.join(REPO, 'configs', path) for path in (
        'mask_rcnn/mask-rcnn_r50_fpn_gn-ws_8xb2-1x_coco.py',
        'mask_rcnn/mask-rcnn_r50_fpn_bcn-ws_8xb2-1x_coco.py',
        'faster_rcnn/faster-rcnn_r50_fpn_gn-ws_8xb2-1x_coco.py',
        'faster_rcnn/faster-rcnn_r50_fpn_bcn-ws_8xb2-1x_coco.py',
    )
] + sorted(glob.glob(osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_*-toy_coco.py'))) + [
    # fine-tuning a BN backbone keeps its statistics (norm_eval=True): a model of its own
    osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18-toypre_fpn_bn_1xb1-toy_coco.py')
]


def test_every_config_model_is_one_that_is_stepped():
    stepped = {tiny_key(path) for path in STEPPED}
    assert len(stepped) == len(STEPPED)
    for path in CONFIGS:
        assert tiny_key(path) in stepped, name_of(path)


@pytest.mark.parametrize('path', STEPPED, ids=name_of)
def test_config_trains_and_predicts_one_step(mmdet_scope, path):
    cfg = load(path)
    torch.manual_seed(0)
    model = build(tiny(cfg.model))
    is_mask = 'mask' in cfg.model.type.lower()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    model.train()
    losses = model.train_step(sample(3, with_masks=is_mask), optim_wrapper)
    assert torch.isfinite(losses['loss'])
    assert ('loss_mask' in losses) == is_mask
    bcns = [m for m in model.modules() if isinstance(m, BCN)]
    assert all(int(m.num_batches_tracked) == 1 for m in bcns)
    model.eval()
    with torch.no_grad():
        result = model.test_step(sample(2, with_masks=is_mask, seed=1))[0]
    pred = result.pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels)
    if is_mask:
        assert pred.masks.shape[1:] == (IMAGE, IMAGE)


@pytest.fixture(scope='module')
def toy_model(mmdet_scope):
    torch.manual_seed(0)
    return build(tiny(load(TOY_BCN).model))


def test_zero_ground_truth_image_trains_through_bcn_heads(toy_model):
    model = toy_model
    model.train()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.001))
    losses = model.train_step(sample(0), optim_wrapper)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses['loss_mask']) == 0.0  # no positive RoI: the mask head saw none


@pytest.mark.parametrize('head', ['bbox_head', 'mask_head'])
def test_bcn_heads_take_zero_rois(toy_model, head):
    module = getattr(toy_model.roi_head, head)
    module.train()
    size = 7 if head == 'bbox_head' else 14
    bcns = [m for m in module.modules() if isinstance(m, BCN)]
    steps = [int(m.num_batches_tracked) for m in bcns]
    feats = torch.zeros(0, 64, size, size, requires_grad=True)
    outs = module(feats)
    outs = outs if isinstance(outs, tuple) else (outs, )
    assert all(o.shape[0] == 0 for o in outs)
    sum(o.sum() for o in outs).backward()
    assert feats.grad.shape == feats.shape
    assert [int(m.num_batches_tracked) for m in bcns] == steps  # empty input: no update


def test_image_without_detections_predicts_empty(toy_model):
    model = toy_model
    model.eval()
    model.test_cfg.rcnn.score_thr = 1.1  # nothing passes: zero boxes reach the mask head
    try:
        with torch.no_grad():
            pred = model.test_step(sample(2))[0].pred_instances
    finally:
        model.test_cfg.rcnn.score_thr = 0.05
    assert len(pred) == 0 and pred.masks.shape == (0, IMAGE, IMAGE)
