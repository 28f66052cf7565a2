"""The toy study's pipeline at a tiny size: the toy classification data, pretraining the
classifier, saving its backbone, loading it into the toy detector through MMEngine's
``Pretrained`` init, fine-tuning and evaluating; the study script's bookkeeping.

Sizes: 48 px crops, 10 training crops, 3 pretraining steps; 96 px detector images, 2 steps.
"""
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from toy_coco_config import toy_coco_header

from mmws import BCN
from mmws_toy import ToySpec, ensure_toy_classification
from mmws_toy.classification import CLASSES, render_split
from mmws.registry import METRICS, MODELS
from mmws_toy import pretrain
from mmws.apis import runner as tool

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
sys.path.insert(0, osp.join(REPO, 'projects', 'toy', 'tools'))
import toy_study  # noqa: E402

PRETRAIN = osp.join(REPO, 'projects/toy/configs/resnet18_bcn-ws_1xb32-toy_cls.py')
FINETUNE = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18-toypre_fpn_bcn-ws_1xb1-toy_coco.py')
SPEC = dict(num_train=10, num_val=5, size=(48, 48), seed=5)

PRETRAIN_TEST = """
_base_ = '{base}'
data_root = '{data_root}/'
spec = {spec}
train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root, spec=spec))
val_dataloader = dict(batch_size=5, dataset=dict(data_root=data_root, spec=spec))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=3, val_interval=3)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=3))
"""

FINETUNE_TEST = """
train_dataloader = dict(dataset=dict(data_root=data_root, spec=spec, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, spec=spec, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = []
model = dict(backbone=dict(init_cfg=dict(checkpoint='{checkpoint}')),
             test_cfg=dict(rcnn=dict(score_thr=0.0)))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
"""


def test_crops_are_deterministic_balanced_and_split_apart():
    spec = ToySpec(**SPEC)
    images, labels = render_split(spec, 'train')
    assert images.shape == (10, 48, 48, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4] * 2 and len(CLASSES) == 5
    again, _ = render_split(spec, 'train')
    assert np.array_equal(images, again)
    val, _ = render_split(spec, 'val')
    assert not np.array_equal(images[:5], val)
    # Shapes are coloured and textured; the background is a smooth gradient plus noise.
    assert images[labels > 0].std(axis=(1, 2)).mean() > images[labels == 0].std(axis=(1, 2)).mean()


def test_dataset_writes_once_and_checks_the_spec(tmp_path):
    root = str(tmp_path / 'cls')
    assert ensure_toy_classification(root, ToySpec(**SPEC)) is True
    assert ensure_toy_classification(root, ToySpec(**SPEC)) is False
    with pytest.raises(ValueError, match='num_train'):
        ensure_toy_classification(root, ToySpec(**dict(SPEC, num_train=11)))


def test_classifier_modes_and_accuracy():
    init_default_scope('mmdet')
    cfg = Config.fromfile(PRETRAIN)
    model = MODELS.build(cfg.model)
    images = torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8)
    labels = [torch.tensor(1), torch.tensor(3)]
    data = model.data_preprocessor(dict(inputs=list(images), data_samples=labels), True)
    assert model(data['inputs'], mode='tensor').shape == (2, 5)
    assert model(**data, mode='loss')['loss'].requires_grad
    model.eval()
    predictions = model(**data, mode='predict')
    metric = METRICS.build(dict(type='mmws_toy.Accuracy'))
    metric.process({}, predictions)
    expected = 50.0 * sum(int(p['pred_label']) == int(p['gt_label']) for p in predictions)
    assert metric.compute_metrics(metric.results) == dict(top1=expected)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('toy_pretrain')
    config = tmp_path / 'pretrain.py'
    config.write_text(PRETRAIN_TEST.format(base=PRETRAIN, data_root=tmp_path / 'cls',
                                           spec=SPEC))
    out = str(tmp_path / 'backbone.pth')
    work_dir = str(tmp_path / 'work')
    pretrain.pretrain_backbone(str(config), out, work_dir, seed=0)
    return tmp_path, out, work_dir


def test_pretraining_saves_the_backbone_and_its_bcn_estimates(pretrained):
    _, out, work_dir = pretrained
    checkpoint = torch.load(out, map_location='cpu')  # weights only
    state, meta = checkpoint['state_dict'], checkpoint['meta']
    assert state and all(key.startswith('backbone.') for key in state)
    assert meta['iters'] == 3 and 'accuracy/top1' in meta['metrics']
    # Batch-mode pretraining moved the estimates off their (0, 1) start.
    steps = [v for k, v in state.items() if k.endswith('num_batches_tracked')]
    assert steps and all(int(v) == 3 for v in steps)
    assert any(not torch.all(v == 0) for k, v in state.items() if k.endswith('running_mean'))
    assert osp.isfile(osp.join(work_dir, 'metrics.json'))


def test_pretraining_is_cached(pretrained, monkeypatch):
    _, out, work_dir = pretrained
    monkeypatch.setattr(pretrain, 'train', lambda argv: pytest.fail('retrained'))
    assert pretrain.pretrain_backbone(PRETRAIN, out, work_dir) == out


def test_finetuning_loads_the_pretrained_backbone_and_evaluates(pretrained):
    tmp_path, out, _ = pretrained
    config = tmp_path / 'finetune.py'
    config.write_text(toy_coco_header(FINETUNE, tmp_path / 'coco', num_train=2, num_val=1) +
                      FINETUNE_TEST.format(checkpoint=out))
    args = tool.parse_train_args([str(config), '--work-dir', str(tmp_path / 'det')])
    cfg = tool.apply_train_args(tool.load_config(args), args)
    tool.prepare_environment(cfg, args)
    runner = tool.build_runner(cfg)
    runner.model.init_weights()  # what runner.train() does first
    saved = torch.load(out, map_location='cpu')['state_dict']
    backbone = runner.model.backbone.state_dict()
    assert backbone.keys() == {key[len('backbone.'):] for key in saved}
    for key, value in saved.items():
        assert torch.equal(backbone[key[len('backbone.'):]], value), key
    bcn_modes = {m.mode for m in runner.model.backbone.modules() if isinstance(m, BCN)}
    assert bcn_modes == {'micro'}

    runner.train()
    with open(tmp_path / 'det' / 'metrics.json') as f:
        [record] = json.load(f)
    assert record['iter'] == 2 and 0.0 <= record['coco/bbox_mAP'] <= 1.0
    # The stem and stage 1 are frozen (as mmdet fine-tunes), stage 2 trained.
    after = runner.model.backbone.state_dict()
    assert torch.equal(after['conv1.weight'], saved['backbone.conv1.weight'])
    assert not torch.equal(after['layer2.0.conv1.weight'],
                           saved['backbone.layer2.0.conv1.weight'])


def test_study_cells_put_the_core_comparisons_first_and_need_their_backbone(tmp_path):
    cells = toy_study.study_cells(3, str(tmp_path))
    names = [cell.name for cell in cells]
    assert len(names) == len(set(names))
    assert all(cell.experiment == 'pretrain' for cell in cells[:4])
    core = [cell.experiment in ('finetune', 'micro') and
            cell.setting.get('variant', 'default') == 'default' for cell in cells[4:]]
    assert core == sorted(core, reverse=True)  # the core comparisons come first
    core_seeds = [cell.seed for cell in cells[4:4 + sum(core)]]
    assert core_seeds == sorted(core_seeds)
    by_name = {cell.name: cell for cell in cells}
    for index, cell in enumerate(cells):
        if cell.experiment == 'finetune':
            needed = by_name[cell.needs]
            assert needed.name in names[:index]
            assert (needed.experiment, needed.norm) == ('pretrain', cell.norm)
    counts = {(c.experiment, c.norm) for c in cells if c.seed == 2}
    assert {(e, n) for e in ('finetune', 'micro', 'scratch') for n in toy_study.NORMS} <= counts
    seg = [cell for cell in cells if cell.experiment == 'seg']
    assert {(cell.norm, cell.seed) for cell in seg} == {
        (norm, seed) for norm in ('GN', 'GN+WS', 'BCN+WS') for seed in range(3)}
    assert all(osp.isfile(osp.join(REPO, cell.config)) for cell in seg)
    # The 16-image segmentation comes last, seed by seed, GN+WS and BCN+WS first in each seed.
    seg16 = [cell for cell in cells if cell.experiment == 'seg16']
    assert cells[-len(seg16):] == seg16
    assert [(cell.seed, cell.norm) for cell in seg16] == [
        (seed, norm) for seed in range(3) for norm in ('GN+WS', 'BCN+WS', 'BN', 'GN')]
    assert all(osp.isfile(osp.join(REPO, cell.config)) and '1xb16' in cell.config
               and cell.setting == {'images': 16} for cell in seg16)


def test_study_tables_and_spread():
    runs = [dict(experiment='finetune', norm=norm, seed=seed, setting={},
                 metrics={'coco/bbox_mAP': base + 0.01 * seed, 'coco/segm_mAP': base})
            for norm, base in (('GN', 0.10), ('GN+WS', 0.11), ('BCN+WS', 0.30))
            for seed in range(3)]
    text = toy_study.tables(runs)
    assert '| BCN+WS | 31.0 ± 1.0 (3) | 30.0 ± 0.0 (3) |' in text
    assert toy_study.spread_lines(runs) == [
        'fine-tuned box AP: BCN+WS > GN, BCN+WS > GN+WS',
        'fine-tuned mask AP: GN+WS > GN, BCN+WS > GN, BCN+WS > GN+WS']


def test_study_segmentation_table_shows_each_class_and_the_lowest_shape():
    runs = [dict(experiment='seg', norm=norm, seed=seed, setting={'images': 1}, wall_s=60.0,
                 metrics={'mIoU': base + seed,
                          **{f'IoU.{name}': base + 10 * index - seed
                             for index, name in enumerate(toy_study.SEG_CLASSES)}})
            for norm, base in (('GN', 40.0), ('BCN+WS', 20.0)) for seed in range(3)]
    text = toy_study.seg_markdown(dict(runs=runs, sessions=[]))
    assert ('| GN | 41.0 ± 1.0 (3) | 39.0 ± 1.0 (3) | 49.0 ± 1.0 (3) | 59.0 ± 1.0 (3) | '
            '69.0 ± 1.0 (3) | 79.0 ± 1.0 (3) | 48.0 |') in text
    assert '| BCN+WS | 21.0 ± 1.0 (3) |' in text and '| GN+WS |' not in text
    assert 'larger than the seed spread (|Δ mean| > std₁ + std₂): GN > BCN+WS.' in text
    assert '(6 runs, 6 min of single-thread run time)' in text
    # The detection and classification tables leave the segmentation to its own block.
    assert 'DeepLabV3' not in toy_study.tables(runs)


def seg_run(experiment, norm, seed, miou):
    return dict(experiment=experiment, norm=norm, seed=seed, wall_s=60.0,
                setting={'images': 16 if experiment == 'seg16' else 1},
                metrics={'mIoU': miou, **{f'IoU.{name}': miou for name in toy_study.SEG_CLASSES}})


def test_study_sets_the_16_image_segmentation_beside_the_1_image_runs():
    runs = ([seg_run('seg', norm, seed, base + seed)
             for norm, base in (('GN+WS', 60.0), ('BCN+WS', 30.0)) for seed in range(3)] +
            [seg_run('seg16', norm, seed, base + seed)
             for norm, base in (('BN', 50.0), ('GN+WS', 61.0), ('BCN+WS', 70.0))
             for seed in range(3)])
    text = toy_study.seg_markdown(dict(runs=runs, sessions=[]))
    one, sixteen = text.split('**Toy DeepLabV3, 16 images per step, from scratch**')
    assert '**Toy DeepLabV3, 1 image per step, from scratch**' in one and '| BN |' not in one
    table16, batch = sixteen.split('**Toy DeepLabV3: 16 images per step against 1**')
    assert '| BN | 51.0 ± 1.0 (3) |' in table16 and '| GN |' not in table16
    assert ('larger than the seed spread (|Δ mean| > std₁ + std₂): GN+WS > BN, BCN+WS > BN, '
            'BCN+WS > GN+WS.') in table16
    assert '| BN | — | 51.0 ± 1.0 (3) | — |' in batch
    assert '| GN+WS | 61.0 ± 1.0 (3) | 62.0 ± 1.0 (3) | +1.0 |' in batch
    assert '| BCN+WS | 31.0 ± 1.0 (3) | 71.0 ± 1.0 (3) | +40.0 (beyond the seed spread) |' in batch
    assert '(15 runs, 15 min of single-thread run time)' in text


def test_readme_blocks_are_rendered_from_the_study_json(tmp_path):
    runs = [dict(experiment=experiment, norm='GN', seed=seed, setting={}, wall_s=60.0,
                 metrics=metrics)
            for seed in range(2)
            for experiment, metrics in (
                ('finetune', {'coco/bbox_mAP': 0.1, 'coco/segm_mAP': 0.2}),
                ('seg', {'mIoU': 50.0, **{f'IoU.{name}': 40.0 for name in toy_study.SEG_CLASSES}}))]
    results = tmp_path / 'toy_study.json'
    results.write_text(json.dumps(dict(runs=runs, sessions=[])))
    readme = tmp_path / 'README.md'
    readme.write_text('\n'.join(['# r', toy_study.TOY_BEGIN, 'old', toy_study.TOY_END,
                                 'between', toy_study.SEG_BEGIN, 'old', toy_study.SEG_END, 'end']))
    toy_study.main(['--report', '--out', str(results), '--plot', str(tmp_path / 'toy.png'),
                    '--readme', str(readme)])
    text = readme.read_text()
    assert 'old' not in text and text.endswith('end') and 'between' in text
    toy, seg = text.split('between')
    assert '| GN | 10.0 ± 0.0 (2) | 20.0 ± 0.0 (2) |' in toy and 'DeepLabV3' not in toy
    assert '| GN | 50.0 ± 0.0 (2) |' in seg and 'Mask R-CNN' not in seg
