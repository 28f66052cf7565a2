"""Fold WS and BCN of a trained mmdet/mmseg model into plain layers (``mmws.fuse``), and export
the fused model to ONNX (``mmws.export``).

Examples::

    python tools/fuse_model.py CONFIG CHECKPOINT --out fused.pth
    python tools/fuse_model.py CONFIG CHECKPOINT --onnx model.onnx --shape 1 3 512 512 \\
        --onnx-output features

The fused checkpoint's ``state_dict`` loads into ``mmws.fuse(<model built from CONFIG>)``.
The ONNX file holds the fused model's tensor forward: ``tensor`` is the model's
``forward(inputs, mode='tensor')`` (mmseg segmentors: decode-head logits; mmdet single-stage
detectors: head outputs), ``features`` is ``extract_feat`` (backbone and neck; the tensor mode
of two-stage detectors such as Mask R-CNN needs image metas and is not exportable alone).
Its batch, height and width are dynamic (``--static`` fixes them at ``--shape``). The file is
checked in onnxruntime against the *unfused* model on real images (``--check-images``, by
default the first two of the config's test set) at two sizes (``--shape``'s and
``--check-size``, default 32 and 64 pixels more) and batch sizes 1 and 2 (static: at
``--shape`` only); the tool fails if an output differs by more than ``--tolerance`` ×
max(1, max |output|).
"""
import argparse
import copy
import os
import sys
from typing import List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.registry import DATASETS, MODELS, DefaultScope
from mmengine.runner import load_checkpoint
from torch import nn

from mmws.checkpoint.safe_load import TRUST_FLAG, CheckpointError, safe_loading
from mmws.export import ONNX_OUTPUTS, check_onnx, export_onnx, image_batch
from mmws.fuse import fuse
from mmws.apis.config_check import UnknownTypeError, check_model_types


def build_model(config: str, checkpoint: str, trust: bool = False) -> nn.Module:
    """Build the config's model in its ``default_scope`` and load the checkpoint strictly
    (safely unless ``trust``: :func:`mmws.checkpoint.safe_loading`)."""
    cfg = Config.fromfile(config)  # runs custom_imports: registers mmws
    check_model_types(cfg)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(cfg.model)
    with safe_loading(trust):
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.eval()


def config_test_images(config: str, count: int = 2) -> List[str]:
    """The first ``count`` image paths of the config's test dataset."""
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
    return [dataset.get_data_info(i)['img_path'] for i in range(min(count, len(dataset)))]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='mmdet or mmseg config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--out', help='fused checkpoint to write')
    parser.add_argument('--onnx', help='ONNX file to write (checked with onnxruntime)')
    parser.add_argument('--shape', type=int, nargs=4, default=(1, 3, 512, 512),
                        metavar=('N', 'C', 'H', 'W'), help='ONNX example input shape')
    parser.add_argument('--static', action='store_true',
                        help='fix the ONNX input shape at --shape (default: batch, height and '
                        'width dynamic)')
    parser.add_argument('--onnx-output', choices=ONNX_OUTPUTS, default='tensor',
                        help='what the ONNX graph returns (see the module docstring)')
    parser.add_argument('--check-images', nargs='+',
                        help='images for the onnxruntime check (default: the first two of the '
                        "config's test set)")
    parser.add_argument('--check-size', type=int, nargs=2, metavar=('H', 'W'),
                        help="second check size (default: --shape's height + 32 and width + 64)")
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest allowed max |onnx - unfused| / max(1, max |unfused|)')
    parser.add_argument(TRUST_FLAG, action='store_true',
                        help='load the checkpoint with torch.load(weights_only=False), which '
                        'runs code the file names: only for files you trust')
    args = parser.parse_args(argv)
    if not (args.out or args.onnx):
        parser.error('nothing to write: give --out and/or --onnx')
    return args


def export_and_check(args: argparse.Namespace, model: nn.Module, fused: nn.Module) -> bool:
    """Export ``fused`` to ``args.onnx`` and check it against the unfused ``model``; prints
    each check and returns whether all are within ``args.tolerance``."""
    import mmcv
    images = [mmcv.imread(path) for path in (args.check_images or config_test_images(args.config))]
    if not images:
        raise ValueError('no images to check the ONNX model with: pass --check-images')
    batch, _, height, width = args.shape
    export_onnx(fused, image_batch(model, images, (height, width), batch), args.onnx,
                args.onnx_output, dynamic=not args.static)
    if args.static:
        shapes = [(batch, (height, width))]
    else:
        second = tuple(args.check_size or (height + 32, width + 64))
        shapes = [(n, size) for size in ((height, width), second) for n in (1, 2)]
    checks = check_onnx(args.onnx, model, [image_batch(model, images, size, n)
                                           for n, size in shapes], args.onnx_output)
    for check in checks:
        print(check.format())
    worst = max(check.relative_error() for check in checks)
    print(f'largest error relative to max(1, max |output|): {worst:.3g} (tolerance '
          f'{args.tolerance:g})')
    return worst <= args.tolerance


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        model = build_model(args.config, args.checkpoint, args.trust_checkpoint)
    except (CheckpointError, UnknownTypeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    fused = fuse(copy.deepcopy(model))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        torch.save({'state_dict': fused.state_dict(),
                    'meta': {'mmws_fused': True, 'config': args.config}}, args.out)
        print(f'wrote {args.out}')
    if args.onnx:
        within = export_and_check(args, model, fused)
        print(f'wrote {args.onnx}')
        if not within:
            print('error: the ONNX model differs from the unfused model by more than '
                  '--tolerance', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
