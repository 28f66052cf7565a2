"""The shared tools: argument handling, toolbox detection, metrics file, plots, an mmseg run."""
import json
import os.path as osp
from types import SimpleNamespace

import pytest
from mmengine.config import Config

from mmws.tools import runner as tool
from mmws.tools.metrics_file import MetricsFileHook
from mmws.tools.plot import plot_curves, read_losses

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_DET = osp.join(REPO, 'configs/toy/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')


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
dataset = dict(type='mmws.ToyVOCDataset', data_root='{root}', spec=dict(num_train=2, num_val=2,
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
