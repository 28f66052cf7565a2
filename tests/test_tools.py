"""The shared tools: argument handling, toolbox detection, metrics file, plots, an mmseg run,
``tools/test.py``'s painting and test-time augmentation on the toy data."""
import glob
import importlib
import json
import os.path as osp
from types import SimpleNamespace

import cv2
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmws.apis import runner as tool
from mmws.hooks.metrics_file import MetricsFileHook
from mmws.apis.plot import plot_curves, read_losses

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_DET = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')


def test_train_cli_matches_mmdet():
    args = tool.parse_train_args([
        'cfg.py', '--work-dir', 'wd', '--amp', '--auto-scale-lr', '--resume', '--launcher',
        'pytorch', '--local-rank', '1', '--cfg-options', 'a.b=1', 'c=[1,2]'
    ])
    assert (args.config, args.work_dir, args.amp, args.auto_scale_lr) == ('cfg.py', 'wd', True,
                                                                          True)
    assert (args.resume, args.launcher, args.local_rank) == ('auto', 'pytorch', 1)
    assert args.cfg_options == {'a.b': 1, 'c': [1, 2]}
    assert tool.parse_train_args(['cfg.py', '--resume', 'x.pth']).resume == 'x.pth'
    assert tool.parse_train_args(['cfg.py']).resume is None


def test_config_options_work_dir_and_train_flags():
    args = tool.parse_train_args([TOY_DET, '--cfg-options', 'train_cfg.max_epochs=5'])
    cfg = tool.load_config(args)
    assert cfg.train_cfg.max_epochs == 5 and cfg.launcher == 'none'
    assert cfg.work_dir == './work_dirs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco'
    args = tool.parse_train_args([TOY_DET, '--work-dir', 'x', '--amp', '--auto-scale-lr',
                                  '--resume', 'ckpt.pth'])
    cfg = tool.apply_train_args(tool.load_config(args), args)
    assert cfg.work_dir == 'x' and cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.auto_scale_lr.enable and (cfg.resume, cfg.load_from) == (True, 'ckpt.pth')
    args = tool.parse_train_args([TOY_DET, '--resume'])
    cfg = tool.apply_train_args(tool.load_config(args), args)
    assert (cfg.resume, cfg.load_from) == (True, None)


def test_bad_scope_and_missing_auto_scale_lr_are_named(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("default_scope = 'mmpretrain'\noptim_wrapper = dict(type='OptimWrapper')\n")
    with pytest.raises(ValueError, match='mmpretrain'):
        tool.load_config(tool.parse_train_args([str(cfg_file)]))
    cfg = Config(dict(default_scope='mmdet', optim_wrapper=dict(type='OptimWrapper')))
    with pytest.raises(ValueError, match='base_batch_size'):
        tool.apply_train_args(cfg, tool.parse_train_args(['x.py', '--auto-scale-lr']))


def test_metrics_file_appends_val_and_test_records(tmp_path):
    hook = MetricsFileHook()
    runner = SimpleNamespace(work_dir=str(tmp_path), epoch=1, iter=40)
    hook.after_val_epoch(runner, {'coco/bbox_mAP': 0.25, 'coco/bbox_mAP_copypaste': '0.2 0.3'})
    runner.epoch, runner.iter = 2, 80
    hook.after_val_epoch(runner, {'coco/bbox_mAP': 0.5})
    hook.after_test_epoch(runner, {'mIoU': 61.0})
    hook.after_val_epoch(runner, None)
    records = json.loads((tmp_path / 'metrics.json').read_text())
    assert records == [
        dict(mode='val', epoch=1, iter=40, **{'coco/bbox_mAP': 0.25}),
        dict(mode='val', epoch=2, iter=80, **{'coco/bbox_mAP': 0.5}),
        dict(mode='test', epoch=2, iter=80, mIoU=61.0),
    ]


def test_plot_curves_from_logs_of_a_resumed_run(tmp_path):
    for run, iters in (('20240101_000000', (10, 20, 30)), ('20240101_010000', (30, 40))):
        vis = tmp_path / run / 'vis_data'
        vis.mkdir(parents=True)
        lines = [dict(loss=5.0 - i / 10, loss_cls=1.0, lr=0.01, iter=i, step=i) for i in iters]
        lines.append({'coco/bbox_mAP': 0.1, 'step': 1})  # a validation line: not a loss
        vis.joinpath('scalars.json').write_text('\n'.join(json.dumps(x) for x in lines))
    (tmp_path / 'metrics.json').write_text(json.dumps(
        [dict(mode='val', epoch=1, iter=20, **{'coco/bbox_mAP': 0.1}),
         dict(mode='val', epoch=2, iter=40, **{'coco/bbox_mAP': 0.3})]))
    losses = read_losses(str(tmp_path))
    assert losses['loss'] == ([10, 20, 30, 40], [4.0, 3.0, 2.0, 1.0])
    assert set(losses) == {'loss', 'loss_cls'}
    out = plot_curves(str(tmp_path))
    assert out == str(tmp_path / 'curves.png')
    assert (tmp_path / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    with pytest.raises(FileNotFoundError, match='scalars.json'):
        plot_curves(str(tmp_path / 'empty'))


MMSEG_CONFIG = """
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmws'], allow_failed_imports=False)
norm_cfg = dict(type='mmws.BCN', num_groups=8)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, size=(48, 48)),
    backbone=dict(type='ResNetV1c', depth=18, base_channels=16, stem_channels=16,
                  conv_cfg=dict(type='mmws.ConvWS'), norm_cfg=norm_cfg, out_indices=(3, )),
    decode_head=dict(type='FCNHead', in_channels=128, in_index=0, channels=16, num_convs=1,
                     num_classes=5, norm_cfg=norm_cfg,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
dataset = dict(type='mmws_toy.ToyVOCDataset', data_root='{root}', spec=dict(num_train=2, num_val=2,
               size=(48, 48)), data_prefix=dict(img_path='JPEGImages',
               seg_map_path='SegmentationClass'))
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=1, num_workers=0, sampler=dict(type='InfiniteSampler'),
                        dataset=dict(dataset, ann_file='ImageSets/Segmentation/train.txt',
                                     pipeline=pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler',
                      shuffle=False), dataset=dict(dataset,
                      ann_file='ImageSets/Segmentation/val.txt', pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2),
                     logger=dict(type='LoggerHook', interval=1))
"""


def test_train_then_test_an_mmseg_config(tmp_path):
    cfg_file = tmp_path / 'tiny_seg.py'
    cfg_file.write_text(MMSEG_CONFIG.replace('{root}', str(tmp_path / 'voc')))
    work_dir = str(tmp_path / 'work')
    runner = tool.train([str(cfg_file), '--work-dir', work_dir])
    assert type(runner.model).__name__ == 'EncoderDecoder'
    metrics = tool.test([str(cfg_file), osp.join(work_dir, 'iter_2.pth'), '--work-dir', work_dir])
    assert 'mIoU' in metrics
    records = json.loads(open(osp.join(work_dir, 'metrics.json')).read())
    assert [r['mode'] for r in records] == ['val', 'test']
    assert records[1]['mIoU'] == pytest.approx(records[0]['mIoU'])


def test_test_cli_matches_the_toolboxes():
    args = tool.parse_test_args(['cfg.py', 'ckpt.pth', '--show', '--show-dir', 'painted',
                                 '--wait-time', '0.5', '--tta'])
    assert (args.show, args.show_dir, args.wait_time, args.tta) == (True, 'painted', 0.5, True)
    args = tool.parse_test_args(['cfg.py', 'ckpt.pth'])
    assert (args.show, args.show_dir, args.wait_time, args.tta) == (False, None, 2, False)


def checkpoint_of(config, path):
    """A checkpoint of the config's model, freshly initialized (what ``tools/test.py`` loads)."""
    cfg = Config.fromfile(config)
    scope = cfg.default_scope
    registry = importlib.import_module(f'{scope}.registry')
    importlib.import_module(f'{scope}.models')
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.MODELS.build(cfg.model)
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return str(path)


# The toy BCN+WS Mask R-CNN on two 96 px toy COCO images; FASTER makes it box-only (mmdet's
# DetTTAModel merges boxes, not masks).
TOY_DET_TEST = """
_base_ = {base!r}
data_root = {root!r}
test_dataloader = dict(dataset=dict(data_root=data_root,
                                    spec=dict(num_train=1, num_val=2, size=(96, 96), seed=1)))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
"""
FASTER = """
model = dict(type='FasterRCNN', roi_head=dict(mask_roi_extractor=None, mask_head=None))
test_evaluator = dict(test_evaluator, metric='bbox')
"""


def toy_det_config(tmp_path, extra=''):
    path = tmp_path / 'toy_det.py'
    path.write_text(TOY_DET_TEST.format(base=TOY_DET, root=str(tmp_path / 'toy_coco') + '/') +
                    extra)
    return str(path)


def test_show_dir_paints_every_mmdet_test_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative work dir and show dir, as on the command line
    config = toy_det_config(tmp_path)
    metrics = tool.test([config, checkpoint_of(config, tmp_path / 'det.pth'), '--work-dir',
                         'work', '--show-dir', 'painted'])
    assert 'coco/bbox_mAP' in metrics
    painted = sorted(glob.glob(str(tmp_path / 'work' / '*' / 'painted' / '*.jpg')))
    assert [osp.basename(p) for p in painted] == ['000000.jpg', '000001.jpg']
    assert all(cv2.imread(p).shape == (96, 192, 3) for p in painted)  # ground truth | prediction


def test_tta_wraps_an_mmdet_box_detector_in_det_tta_model(tmp_path):
    config = toy_det_config(tmp_path, FASTER)
    args = tool.parse_test_args([config, checkpoint_of(config, tmp_path / 'det.pth'),
                                 '--work-dir', str(tmp_path / 'work'), '--tta'])
    cfg = tool.apply_test_args(tool.load_config(args), args)
    tool.prepare_environment(cfg, args)
    runner = tool.build_runner(cfg)
    assert type(runner.model).__name__ == 'DetTTAModel'
    assert type(runner.model.module).__name__ == 'FasterRCNN'
    flips = cfg.test_dataloader.dataset.pipeline[-1]
    assert flips.type == 'TestTimeAug' and len(flips.transforms[0]) == 2
    assert 'coco/bbox_mAP' in runner.test()


SEG_TEST = """
default_hooks = dict(visualization=dict(type='SegVisualizationHook'))
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0)],
        [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1.)],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
"""


@pytest.fixture
def seg_config_and_checkpoint(tmp_path):
    config = tmp_path / 'tiny_seg.py'
    config.write_text(MMSEG_CONFIG.replace('{root}', str(tmp_path / 'voc')) + SEG_TEST)
    return str(config), checkpoint_of(str(config), tmp_path / 'seg.pth')


def test_show_dir_paints_every_mmseg_test_image(tmp_path, seg_config_and_checkpoint):
    show_dir = tmp_path / 'painted'
    metrics = tool.test([*seg_config_and_checkpoint, '--work-dir', str(tmp_path / 'work'),
                         '--show-dir', str(show_dir)])
    assert 'mIoU' in metrics
    painted = sorted(glob.glob(str(show_dir / 'vis_data' / 'vis_image' / '*.png')))
    assert len(painted) == 2, painted  # mmseg's hook alone paints every 50th image
    assert all(cv2.imread(p).shape == (48, 96, 3) for p in painted)


def test_tta_wraps_an_mmseg_model_in_the_configs_tta_model(tmp_path, seg_config_and_checkpoint):
    args = tool.parse_test_args([*seg_config_and_checkpoint, '--work-dir',
                                 str(tmp_path / 'work'), '--tta'])
    cfg = tool.apply_test_args(tool.load_config(args), args)
    runner = tool.build_runner(cfg)
    assert type(runner.model).__name__ == 'SegTTAModel'
    assert 'mIoU' in runner.test()


def test_show_and_tta_need_their_config_entries(seg_config_and_checkpoint):
    config, checkpoint = seg_config_and_checkpoint
    cfg = Config.fromfile(config)
    for key in ('tta_pipeline', 'default_hooks'):
        cfg.pop(key)
    args = tool.parse_test_args([config, checkpoint, '--tta'])
    with pytest.raises(ValueError, match='tta_pipeline'):
        tool.apply_test_args(cfg, args)
    with pytest.raises(ValueError, match='visualization hook'):
        tool.apply_test_args(cfg, tool.parse_test_args([config, checkpoint, '--show']))
