"""The shared tools: argument handling, toolbox detection, metrics file, plots, an mmseg run,
``tools/test.py``'s painting and test-time augmentation on the toy data."""
import glob
import importlib
import json
import os
import os.path as osp
import pathlib
import pickle
import runpy
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.registry import DefaultScope

from mmws.checkpoint.safe_load import (CheckpointError, UnsafeCheckpointError, allowlisted,
                                       load_checkpoint_file, load_pickle_file, safe_loading)
from mmws.apis import runner as tool
from mmws.hooks.metrics_file import MetricsFileHook
from mmws.apis.plot import plot_curves, read_losses

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_DET = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')
FUSE_TOOL = osp.join(REPO, 'tools/fuse_model.py')
CONVERT_TOOL = osp.join(REPO, 'tools/convert_checkpoint.py')


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


def test_config_options_work_dir_and_train_flags(monkeypatch):
    args = tool.parse_train_args([TOY_DET, '--cfg-options', 'train_cfg.max_epochs=5'])
    cfg = tool.load_config(args)
    assert cfg.train_cfg.max_epochs == 5 and cfg.launcher == 'none'
    assert cfg.work_dir == './work_dirs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco'
    args = tool.parse_train_args([TOY_DET, '--work-dir', 'x', '--amp', '--auto-scale-lr',
                                  '--resume', 'ckpt.pth'])
    monkeypatch.setattr(tool, 'get_device', lambda: 'cuda')  # --amp is accelerator-only
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


# -- safe checkpoint loading, named errors ----------------------------------------------------
class TouchOnLoad:
    """What a crafted checkpoint does: unpickling it creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path), )


class HistoryBufferInit:
    """Names only allowlisted globals, but calls ``getattr`` beyond HistoryBuffer's statistics
    methods: ``getattr(HistoryBuffer, 'update')``."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, 'update')


@pytest.fixture
def tiny_seg(tmp_path):
    """The tiny mmseg config; its toy data is written on first use."""
    cfg_file = tmp_path / 'tiny_seg.py'
    cfg_file.write_text(MMSEG_CONFIG.replace('{root}', str(tmp_path / 'voc')))
    return str(cfg_file)


def test_toy_run_checkpoints_load_weights_only(tmp_path, tiny_seg, monkeypatch, capsys):
    """Train, --resume, test and fuse: every torch.load is weights_only=True, with no global
    outside the allowlist, and no process-wide opt-out."""
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    calls = []
    torch_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    work = str(tmp_path / 'work')
    assert tool.main(tool.train, [tiny_seg, '--work-dir', work]) == 0
    checkpoint = osp.join(work, 'iter_2.pth')
    with allowlisted():
        assert torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint) == []
    assert 'builtins.getattr' in torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint)
    saved = load_checkpoint_file(checkpoint)
    assert isinstance(saved['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert calls == [True]

    resumed = str(tmp_path / 'resumed')
    assert tool.main(tool.train, [tiny_seg, '--work-dir', resumed, '--resume', checkpoint,
                                  '--cfg-options', 'train_cfg.max_iters=4']) == 0
    assert osp.exists(osp.join(resumed, 'iter_4.pth'))
    assert tool.main(tool.test, [tiny_seg, osp.join(resumed, 'iter_4.pth'), '--work-dir',
                                 resumed]) == 0
    fuse_tool = runpy.run_path(str(FUSE_TOOL))
    assert fuse_tool['main']([tiny_seg, osp.join(resumed, 'iter_4.pth'), '--out',
                              str(tmp_path / 'fused.pth')]) == 0
    assert calls == [True] * 4 and 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    records = json.loads(open(osp.join(resumed, 'metrics.json')).read())
    assert [(r['mode'], r['iter']) for r in records][0] == ('val', 4)  # resumed at 2


def test_safe_loading_restores_mmengine_loader_and_nests():
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    with safe_loading():
        inner = CheckpointLoader._get_checkpoint_loader('x.pth')
        assert inner is not load_from_local
        with safe_loading(trust=True):
            assert CheckpointLoader._get_checkpoint_loader('x.pth') not in (inner,
                                                                            load_from_local)
        assert CheckpointLoader._get_checkpoint_loader('x.pth') is inner
    assert CheckpointLoader._get_checkpoint_loader('x.pth') is load_from_local


def test_allowlist_leaves_the_processes_own_entries():
    """``import mmws`` adds nothing to torch's allowlist; a block adds SAFE_GLOBALS and on exit
    removes only what it added."""
    before = set(torch.serialization.get_safe_globals())
    assert not before & {np.ndarray, HistoryBuffer}
    with torch.serialization.safe_globals([np.ndarray]):  # the process's own entry
        with allowlisted():
            assert {np.ndarray, HistoryBuffer} <= set(torch.serialization.get_safe_globals())
        assert set(torch.serialization.get_safe_globals()) == before | {np.ndarray}


def crafted_files(tmp_path, marker):
    """A training checkpoint and a Detectron .pkl whose pickles touch ``marker``."""
    checkpoint, pkl = tmp_path / 'crafted.pth', tmp_path / 'crafted.pkl'
    torch.save({'state_dict': {}, 'meta': {'note': TouchOnLoad(marker)}}, checkpoint)
    with pkl.open('wb') as f:
        pickle.dump({'blobs': {'conv1_w': np.zeros(3)}, 'note': TouchOnLoad(marker)}, f,
                    protocol=2)
    return str(checkpoint), str(pkl)


def test_crafted_files_are_real(tmp_path):
    marker = tmp_path / 'touched'
    checkpoint, pkl = crafted_files(tmp_path, marker)
    load_checkpoint_file(checkpoint, trust=True)  # what --trust-checkpoint would do
    assert marker.exists()
    marker.unlink()
    with open(pkl, 'rb') as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize('tool_name', ['train load_from', 'train --resume', 'test', 'fuse',
                                       'convert', 'convert .pkl'])
def test_crafted_checkpoint_is_refused_by_every_tool(tmp_path, tiny_seg, capsys, tool_name):
    marker = tmp_path / 'touched'
    checkpoint, pkl = crafted_files(tmp_path, marker)
    work, out = str(tmp_path / 'work'), str(tmp_path / 'out.pth')
    runs = {
        'train load_from': lambda: tool.main(tool.train, [tiny_seg, '--work-dir', work,
                                                          '--cfg-options',
                                                          f'load_from={checkpoint}']),
        'train --resume': lambda: tool.main(tool.train, [tiny_seg, '--work-dir', work,
                                                         '--resume', checkpoint]),
        'test': lambda: tool.main(tool.test, [tiny_seg, checkpoint, '--work-dir', work]),
        'fuse': lambda: runpy.run_path(str(FUSE_TOOL))['main']([tiny_seg, checkpoint,
                                                                '--out', out]),
        'convert': lambda: runpy.run_path(str(CONVERT_TOOL))['main']([checkpoint, out]),
        'convert .pkl': lambda: runpy.run_path(str(CONVERT_TOOL))['main']([pkl, out]),
    }
    assert runs[tool_name]() == 1
    error = capsys.readouterr().err
    flag = '--trust-source' if tool_name.startswith('convert') else '--trust-checkpoint'
    assert 'pathlib.PosixPath' in error and flag in error, error
    assert not marker.exists() and not osp.exists(out)


def test_legacy_format_and_protocol_4_pickles_are_scanned_too(tmp_path):
    """torch's pre-1.6 format (a sequence of pickles) and a protocol-4 ``.pkl``
    (``STACK_GLOBAL``): the globals are named before anything is unpickled."""
    marker = tmp_path / 'touched'
    legacy, pkl = tmp_path / 'legacy.pth', tmp_path / 'p4.pkl'
    torch.save({'state_dict': {'w': torch.ones(2)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(legacy)['state_dict']['w'], torch.ones(2))
    torch.save({'note': TouchOnLoad(marker)}, legacy, _use_new_zipfile_serialization=False)
    pkl.write_bytes(pickle.dumps({'note': TouchOnLoad(marker)}, protocol=4))
    for load in (lambda: load_checkpoint_file(legacy), lambda: load_pickle_file(pkl)):
        with pytest.raises(UnsafeCheckpointError) as error:
            load()
        assert 'pathlib.PosixPath' in error.value.globals, error.value
    assert not marker.exists()


def test_getattr_is_allowed_only_for_history_buffer_statistics(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save({'state_dict': {}, 'hook': HistoryBufferInit()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\(.*HistoryBuffer.*'update'\)"):
        load_checkpoint_file(path)
    buffer = HistoryBuffer([1.0, 2.0], [1, 1])
    torch.save({'buffer': buffer, 'scalar': np.float64(0.5), 'int': np.int64(3)}, path)
    loaded = load_checkpoint_file(path)
    assert loaded['buffer'].mean() == 1.5 and loaded['scalar'] == 0.5 and loaded['int'] == 3


def _truncated(path):
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('make, cause', [
    (lambda p: None, 'does not exist'),
    (lambda p: p.write_bytes(b''), r'is empty \(0 bytes\)'),
    (_truncated, 'truncated or corrupt'),
    (lambda p: p.write_text('garbage\n'), r"is not a checkpoint \(it starts with b'garbage"),
    (lambda p: p.mkdir(), 'is a directory'),
    (lambda p: p.write_bytes(pickle.dumps({'a': 1}, protocol=2)), 'not a readable checkpoint'),
])
def test_bad_checkpoint_files_name_path_and_expectation(tmp_path, make, cause):
    path = tmp_path / 'model.pth'
    make(path)
    with pytest.raises(CheckpointError, match=cause) as error:
        load_checkpoint_file(path)
    assert str(path) in str(error.value) and 'expected a PyTorch checkpoint' in str(error.value)
    assert 'weights_only=False will likely succeed' not in str(error.value)


def test_test_cli_on_a_garbage_file_says_what_it_is(tmp_path, tiny_seg):
    garbage = tmp_path / 'garbage.pth'
    garbage.write_text('garbage\n')
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools/test.py'), tiny_seg,
                             str(garbage), '--work-dir', str(tmp_path / 'work')],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {garbage} is not a checkpoint'), result.stderr


def test_amp_without_an_accelerator_stops_in_one_line(tiny_seg, capsys):
    assert tool.main(tool.train, [tiny_seg, '--amp']) == 1
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and '--amp needs a cuda/npu/mlu/musa device' in error
    assert 'found cpu' in error


@pytest.mark.parametrize('option, name, closest', [
    ('model.backbone.norm_cfg.type=BCN', 'BCN', 'mmws.BCN'),
    ('model.decode_head.norm_cfg.type=mmws.BNC', 'mmws.BNC', 'mmws.BCN'),
    ('model.backbone.conv_cfg.type=mmws.ConvWs', 'mmws.ConvWs', 'mmws.ConvWS'),
])
def test_unknown_layer_type_names_type_scope_and_closest(tiny_seg, capsys, option, name,
                                                         closest):
    assert tool.main(tool.train, [tiny_seg, '--cfg-options', option]) == 1
    error = capsys.readouterr().err
    where = option.split('.type=')[0]
    assert f"unknown type '{name}' in {where}" in error and "scope 'mmseg'" in error, error
    first = error.split('closest registered names: ')[1]
    assert first.startswith(f"'{closest}' (mmws.models."), error


@pytest.mark.parametrize('option, name, closest', [
    ('model.type=EncoderDecodr', 'EncoderDecodr', 'EncoderDecoder'),  # built with the runner
    ('train_dataloader.dataset.type=mmws_toy.ToyVocDataset', 'mmws_toy.ToyVocDataset',
     'mmws_toy.ToyVOCDataset'),  # built when training starts
])
def test_other_unknown_types_get_closest_names(tmp_path, tiny_seg, capsys, option, name,
                                               closest):
    assert tool.main(tool.train, [tiny_seg, '--work-dir', str(tmp_path / 'work'),
                                  '--cfg-options', option]) == 1
    error = capsys.readouterr().err
    assert f"unknown type '{name}'" in error and f"'{closest}'" in error, error


def test_unprefixed_convws_next_to_mmws_warns_once(tiny_seg, monkeypatch):
    from mmws.apis import config_check
    warnings = []
    monkeypatch.setattr(config_check, 'print_log',
                        lambda message, **kwargs: warnings.append(message))
    cfg = Config.fromfile(tiny_seg)
    config_check.check_model_types(cfg)
    assert warnings == []
    cfg.merge_from_dict({'model.backbone.conv_cfg.type': 'ConvWS'})
    config_check.check_model_types(cfg)
    assert len(warnings) == 1 and 'ConvWS2d' in warnings[0] and 'mmws.ConvWS' in warnings[0]
    assert warnings[0].startswith('model.backbone.conv_cfg')
