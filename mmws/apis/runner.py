"""Train and test entry points for mmdet and mmseg configs, with mmws imported.

:func:`train` and :func:`test` do what ``tools/train.py`` / ``tools/test.py`` of the config's
toolbox do (the toolbox is the config's ``default_scope``: ``'mmdet'`` or ``'mmseg'``), with the
same command line, plus what this stack needs:

- ``import mmws``, so configs work with or without ``custom_imports``;
- safe checkpoint loading (``load_from``, ``--resume``, the test checkpoint, ``Pretrained``
  init): every local file goes through :func:`mmws.checkpoint.load_checkpoint_file`
  (``torch.load(weights_only=True)`` with the types MMEngine checkpoints hold; anything else is
  refused unless ``--trust-checkpoint``), with errors that name the file and the cause;
- a check of the model config's layer types before the runner builds it
  (:mod:`mmws.apis.config_check`): an unknown ``type`` names itself, its scope and the closest
  registered names; an unprefixed ``ConvWS`` next to mmws gets a warning;
- ``--amp`` on a machine without an accelerator stops with one line (MMEngine asserts);
- distributed launches on machines without CUDA (``--launcher pytorch`` on CPU): MMEngine calls
  ``torch.cuda.set_device`` and passes ``device_ids`` to DDP; here the process group is created
  with gloo first and DDP gets ``device_ids=None``;
- ``metrics.json`` in the work dir: every evaluation's metrics (see :class:`MetricsFileHook`);
- a clean end of distributed runs (:func:`distributed_teardown`): MMEngine leaves the process
  group alive at exit, and a gloo process that exits while a peer's last message is in flight
  aborts (``terminate called without an active exception``, exit code -6), failing the launch
  after training has finished.
"""
import argparse
import copy
import importlib
import logging
import os
import os.path as osp
import sys
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.runner import Runner

import mmws  # noqa: F401  (registers mmws.* for configs without custom_imports)
from ..checkpoint.safe_load import TRUST_FLAG, CheckpointError, check_file, safe_loading
from .config_check import UnknownTypeError, check_model_types, unknown_types_explained
from ..hooks import MetricsFileHook

TOOLBOXES = ('mmdet', 'mmseg')
#: The devices MMEngine's ``AmpOptimWrapper`` accepts.
AMP_DEVICES = ('cuda', 'npu', 'mlu', 'musa')


class ToolError(ValueError):
    """Bad input to a tool that it reports in one line (no traceback)."""


#: What the command-line tools report as ``error: <message>`` and exit status 1.
REPORTED_ERRORS = (ToolError, CheckpointError, UnknownTypeError)


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        TRUST_FLAG,
        action='store_true',
        help='load the checkpoints with torch.load(weights_only=False), which runs code the '
        'file names: only for files you trust (by default anything but tensors and the types '
        'MMEngine checkpoints hold is refused)')
    parser.add_argument('--work-dir', help='the dir to save logs, checkpoints and metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs (mmdet/mmseg syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/train.py`` (mmdet's train CLI)."""
    parser = argparse.ArgumentParser(description='Train a detector or a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate linearly with the total batch size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a path from the latest one in the '
        'work dir')
    _common_args(parser)
    return parser.parse_args(argv)


def parse_test_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/test.py`` (the common part of mmdet's and mmseg's test CLIs)."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector or a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out',
        help='mmdet: dump the predictions to this .pkl file; mmseg: save the predicted '
        'segmentation maps in this directory')
    parser.add_argument('--show', action='store_true', help='show the predictions in a window')
    parser.add_argument(
        '--show-dir',
        help='save the predictions painted on the images: mmdet in WORK_DIR/TIMESTAMP/SHOW_DIR, '
        'mmseg in SHOW_DIR/vis_data/vis_image')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each image is shown with --show')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model and tta_pipeline")
    _common_args(parser)
    return parser.parse_args(argv)


def toolbox_of(cfg: Config) -> str:
    """The toolbox a config belongs to, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in TOOLBOXES:
        raise ToolError(f'config default_scope must be one of {TOOLBOXES}, got {scope!r}')
    return scope


def load_config(args: argparse.Namespace) -> Config:
    """The config with the CLI options applied (as the toolboxes' tools do)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    toolbox_of(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def apply_train_args(cfg: Config, args: argparse.Namespace) -> Config:
    """``--amp``, ``--auto-scale-lr`` and ``--resume`` as mmdet's ``tools/train.py``."""
    if args.amp:
        if get_device() not in AMP_DEVICES:
            raise ToolError(f'--amp needs a {"/".join(AMP_DEVICES)} device and this machine '
                            f'has none (found {get_device()}; MMEngine\'s AmpOptimWrapper '
                            'supports only those): train without --amp')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper',
                                                               'AmpOptimWrapper'):
            raise ToolError(f'--amp needs optim_wrapper.type OptimWrapper, got '
                            f'{cfg.optim_wrapper.type!r}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ToolError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def apply_test_args(cfg: Config, args: argparse.Namespace) -> Config:
    """The checkpoint, ``--show``/``--show-dir``/``--wait-time``, ``--tta`` and mmseg's
    ``--out`` as the toolbox's ``tools/test.py``."""
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        trigger_visualization(cfg, args)
    if args.tta:
        use_test_time_augmentation(cfg)
    if args.out is not None and toolbox_of(cfg) == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def trigger_visualization(cfg: Config, args: argparse.Namespace) -> None:
    """Turn on the config's visualization hook (``DetVisualizationHook`` /
    ``SegVisualizationHook``) as the toolboxes' ``trigger_visualization_hook`` do. One
    difference: mmseg's hook paints every ``interval``-th image (default 50); here it paints
    each image unless the config sets an interval."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ToolError('--show and --show-dir need a visualization hook in the config: '
                        "default_hooks = dict(visualization=dict(type='DetVisualizationHook'))"
                        " (mmseg: 'SegVisualizationHook')")
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if toolbox_of(cfg) == 'mmdet':
        if args.show_dir:
            hook['test_out_dir'] = args.show_dir
    else:
        hook.setdefault('interval', 1)
        if args.show_dir:
            cfg.visualizer.update(save_dir=args.show_dir)


def use_test_time_augmentation(cfg: Config) -> None:
    """Wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline``.

    As the toolboxes' ``tools/test.py --tta``: mmseg configs carry both (mmseg's runtime
    defines ``tta_model = dict(type='SegTTAModel')``, its dataset configs ``tta_pipeline``);
    for mmdet configs without them, mmdet's defaults: ``DetTTAModel`` merging the boxes with
    NMS at IoU 0.5, over the test pipeline with and without a horizontal flip.
    """
    if toolbox_of(cfg) == 'mmdet':
        if 'tta_model' not in cfg:
            print_log('no tta_model in the config: using DetTTAModel with NMS at IoU 0.5',
                      logger='current', level=logging.WARNING)
            cfg.tta_model = dict(
                type='DetTTAModel',
                tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        if 'tta_pipeline' not in cfg:
            print_log('no tta_pipeline in the config: testing with and without a horizontal '
                      'flip', logger='current', level=logging.WARNING)
            cfg.tta_pipeline = _flip_tta_pipeline(cfg)
    else:
        missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
        if missing:
            raise ToolError(f'--tta needs {" and ".join(missing)} in the config (mmseg\'s '
                            "_base_/default_runtime.py and _base_/datasets/*.py define them)")
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _flip_tta_pipeline(cfg: Config) -> list:
    """mmdet's default TTA pipeline: the test pipeline, its final ``PackDetInputs`` replaced by
    a ``TestTimeAug`` over a flipped and an unflipped copy."""
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset['dataset']
    pipeline = copy.deepcopy(dataset.pipeline)
    pipeline[-1] = dict(
        type='TestTimeAug',
        transforms=[[dict(type='RandomFlip', prob=1.),
                     dict(type='RandomFlip', prob=0.)],
                    [dict(type='PackDetInputs',
                          meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                     'scale_factor', 'flip', 'flip_direction'))]])
    return pipeline


def prepare_environment(cfg: Config, args: argparse.Namespace) -> None:
    """Process-level setup before the runner is built (see the module docstring)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if toolbox_of(cfg) == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        _setup_cpu_distributed(cfg)


def _setup_cpu_distributed(cfg: Config) -> None:
    """Create the gloo process group and make DDP take no device ids (CPU modules)."""
    if cfg.launcher != 'pytorch':
        raise ToolError(f'on a machine without CUDA only --launcher pytorch is supported, '
                        f'got {cfg.launcher!r}')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    backend = dist_cfg.get('backend', 'gloo')
    if backend != 'gloo':
        print_log(f'no CUDA: using the gloo backend instead of {backend!r}', logger='current',
                  level=logging.WARNING)
    dist_cfg['backend'] = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None  # DDP takes device ids for CUDA modules only
    cfg.model_wrapper_cfg = wrapper


@contextmanager
def distributed_teardown() -> Iterator[None]:
    """Destroy the default process group, if the block created one, once every rank is done.

    For the command-line tools: every rank first waits at a barrier (no collective of a peer is
    still in flight), then the group is destroyed, so no rank exits with gloo's threads running.
    A group that existed before the block is left alone.
    """
    existed = dist.is_available() and dist.is_initialized()
    yield
    if not existed and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_runner(cfg: Config) -> Runner:
    """The runner the config's toolbox would build, with :class:`MetricsFileHook`, after
    :func:`~mmws.apis.config_check.check_model_types`."""
    check_model_types(cfg)
    # MMEngine reuses a visualizer of the same name built earlier in the process, save_dir and
    # all: a run in the same process (tests, notebooks) would log its scalars into the first
    # run's directory. Each runner gets a visualizer of its own.
    if 'visualizer' in cfg:
        cfg.visualizer.name = f'{cfg.visualizer.get("name", "visualizer")}:{uuid.uuid4().hex}'
    with unknown_types_explained():
        if 'runner_type' in cfg:
            registry = importlib.import_module(f'{toolbox_of(cfg)}.registry')
            runner = registry.RUNNERS.build(cfg)
        else:
            runner = Runner.from_cfg(cfg)
    runner.register_hook(MetricsFileHook())
    return runner


def train(argv: Optional[List[str]] = None) -> Runner:
    """``tools/train.py``: train the config's model; returns the runner."""
    args = parse_train_args(argv)
    cfg = apply_train_args(load_config(args), args)
    prepare_environment(cfg, args)
    with safe_loading(args.trust_checkpoint), unknown_types_explained():
        runner = build_runner(cfg)
        runner.train()
    return runner


def test(argv: Optional[List[str]] = None) -> dict:
    """``tools/test.py``: evaluate a checkpoint on the config's test set; returns the metrics."""
    args = parse_test_args(argv)
    if '://' not in args.checkpoint:  # a local file: named errors before the runner is built
        check_file(args.checkpoint)
    cfg = apply_test_args(load_config(args), args)
    prepare_environment(cfg, args)
    with safe_loading(args.trust_checkpoint), unknown_types_explained():
        runner = build_runner(cfg)
        if args.out is not None and toolbox_of(cfg) == 'mmdet':
            if not args.out.endswith(('.pkl', '.pickle')):
                raise ToolError(f'--out must be a .pkl file for mmdet, got {args.out!r}')
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        return runner.test()


def main(tool: Callable[[Optional[List[str]]], object],
         argv: Optional[List[str]] = None) -> int:
    """Run ``tool`` (:func:`train` or :func:`test`) as a command: the errors of bad input
    (:data:`REPORTED_ERRORS`) print as ``error: <message>`` with exit status 1."""
    try:
        with distributed_teardown():
            tool(argv)
    except REPORTED_ERRORS as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    return 0
