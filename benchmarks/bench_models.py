"""Model benchmark: train steps of Mask R-CNN and DeepLabV3 with BN, GN, GN+WS and BCN+WS, and
a ResNet-50 GN backbone with each Weight Standardization convolution, in one process.

- Mask R-CNN R-50-FPN (``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``) and DeepLabV3
  R-50-D8 (``mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py``), with the
  norm deltas of mmdet's ``gn/`` and ``gn+ws/`` configs (GN everywhere, Mask R-CNN's box head
  becomes ``Shared4Conv1FCBBoxHead``; WS is ``mmws.ConvWS`` in the backbone, neck and heads;
  BCN+WS replaces GN by ``mmws.BCN``). BN is each toolbox's own config (Mask R-CNN: frozen
  ``norm_eval`` BN in the backbone; DeepLabV3: BN, its SyncBN in one process, except the ASPP
  image-pool branch, whose BN sees one value per channel at 1 image and runs in eval mode).
  One train step = loss forward, backward and an SGD step, at 1 random image (mmdet's
  ``demo_mm_inputs`` with 3 instances and masks; a random label map). The SGD step has
  learning rate 0 so every repetition sees the same weights (same proposals and RoIs).
- ResNet-50 with GN (mmdet's ``ResNet``, all stages trainable) at 1 image with every conv as
  ``nn.Conv2d``, mmcv's ``ConvWS2d``, a timm-style ``StdConv2d`` and ``mmws.ConvWS``
  (identical weights): training forward + backward, and ``eval()`` under ``torch.no_grad()``.

Per variant: median step time (interleaved measurement), activations saved for backward and,
with ``--peak-memory``, the profiler's peak memory of one step. Writes
``benchmarks/results/models.json``.

Run: ``.venv/bin/python benchmarks/bench_models.py`` (about 5 minutes on 2 cores at the
defaults: Mask R-CNN at 512² with 128 RoIs, DeepLabV3 at 256², ResNet-50 at 512²), ``--quick``
for a smoke run on ResNet-18 models at 64 pixels. ``--norms GN+WS BCN+WS --no-backbone
--bcn-before DIR`` times BCN+WS against another revision's BCN side by side (``DIR`` holds that
revision's ``mmws/models/{bcn,functional,load_checks}.py``, e.g. from ``git show main:...``).
"""
import argparse
import copy
import gc
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from mmcv.cnn.bricks import ConvWS2d
from mmengine.hub import get_config
from mmengine.registry import DefaultScope
from torch import nn

from bench_layers import StdConv2d
from common import (RESULTS_DIR, check_targets, import_bcn_before, machine, peak_bytes,
                    revision, saved_bytes, targets_table, time_interleaved, utc_now, write_json)
from mmws import ConvWS
from render_performance import backbone_table, steps_table

NORMS = ('BN', 'GN', 'GN+WS', 'BCN+WS')
BEFORE = 'BCN+WS before'  # with --bcn-before: another revision's BCN
GN = dict(type='GN', num_groups=32, requires_grad=True)
BCN = dict(type='mmws.BCN', num_groups=32)
WS = dict(type='mmws.ConvWS')
MASK_RCNN_CONFIG = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
DEEPLABV3_CONFIGS = {
    50: 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    18: 'mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py',
}
CONVS = {'Conv2d': nn.Conv2d, 'mmcv ConvWS2d': ConvWS2d, 'timm StdConv2d': StdConv2d,
         'mmws ConvWS': ConvWS}


def norm_delta(norm: str) -> Dict[str, Optional[dict]]:
    """``norm_cfg`` / ``conv_cfg`` of a variant (``None``: keep the config's)."""
    return {'BN': dict(norm_cfg=None, conv_cfg=None), 'GN': dict(norm_cfg=GN, conv_cfg=None),
            'GN+WS': dict(norm_cfg=GN, conv_cfg=WS), 'BCN+WS': dict(norm_cfg=BCN, conv_cfg=WS),
            BEFORE: dict(norm_cfg=dict(BCN, type='mmws.BCNBefore'), conv_cfg=WS)}[norm]


def register_bcn_before(folder: Path) -> None:
    """Register another revision's BCN (:func:`common.import_bcn_before`) as
    ``mmws.BCNBefore``."""
    from mmws.registry import MODELS
    MODELS.register_module(name='BCNBefore', module=import_bcn_before(folder))


def with_norm(part: dict, norm_cfg: Optional[dict], conv_cfg: Optional[dict]) -> dict:
    if norm_cfg is not None:
        part['norm_cfg'] = norm_cfg
    if conv_cfg is not None:
        part['conv_cfg'] = conv_cfg
    return part


def mask_rcnn_model(norm: str, rois: int, depth: int) -> nn.Module:
    """Mask R-CNN R-50-FPN from mmdet's config with the norm deltas of mmdet's gn(+ws) configs,
    sampling ``rois`` RoIs per image for the box head (the config: 512); ``depth=18`` swaps in
    a ResNet-18 (the smoke run)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    model = get_config(MASK_RCNN_CONFIG).model
    model.backbone.init_cfg = None  # no download: random weights are enough for timing
    model.train_cfg.rcnn.sampler.num = rois
    if depth != 50:
        expansion = 4 if depth >= 50 else 1
        model.backbone.depth = depth
        model.neck.in_channels = [64 * expansion * 2**stage for stage in range(4)]
    delta = norm_delta(norm)
    if delta['norm_cfg'] is not None:
        with_norm(model.backbone, **delta)
        with_norm(model.neck, **delta)
        with_norm(model.roi_head.bbox_head, **delta).update(type='Shared4Conv1FCBBoxHead',
                                                             conv_out_channels=256)
        with_norm(model.roi_head.mask_head, **delta)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(model)


def deeplabv3_model(norm: str, size: int, depth: int) -> nn.Module:
    """DeepLabV3 R-``depth``-D8 from mmseg's config with the norm deltas applied to all parts,
    its data preprocessor padding to ``size × size`` (the config: the 512×1024 crop)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    model = get_config(DEEPLABV3_CONFIGS[depth]).model
    model.pretrained = None
    model.data_preprocessor.size = (size, size)
    delta = norm_delta(norm)
    if delta['norm_cfg'] is None:
        delta['norm_cfg'] = dict(type='BN', requires_grad=True)  # SyncBN in one process
    for part in (model.backbone, model.decode_head, model.auxiliary_head):
        with_norm(part, **delta)
    with DefaultScope.overwrite_default_scope('mmseg'):
        built = MODELS.build(model)
    if norm == 'BN':
        # One value per channel at 1 image: batch statistics are undefined there.
        built.decode_head.image_pool[1].norm.eval()
    return built


def mask_rcnn_batch(size: int) -> dict:
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=1, image_shapes=[(3, size, size)], num_items=[3],
                          num_classes=80, with_mask=True)


def deeplabv3_batch(size: int) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    sample = SegDataSample(metainfo=dict(img_shape=(size, size), pad_shape=(size, size),
                                         ori_shape=(size, size)))
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, size, size),
                                                     generator=generator))
    image = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
    return dict(inputs=[image], data_samples=[sample])


def train_step(model: nn.Module, batch: dict) -> Dict[str, Callable[[], object]]:
    """The loss forward and one full train step (forward, backward, SGD step) of a model, in
    the mode it was built in (training)."""
    data = model.data_preprocessor(batch, True)
    # No momentum buffers and no gradients kept between steps: all variants stay in memory
    # together for the interleaved measurement.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0,
                                weight_decay=1e-4)

    def loss():
        losses = model(**data, mode='loss')
        return model.parse_losses(losses)[0]

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return dict(loss=loss, step=step, params=model.parameters)


def bench_train_steps(build: Callable[[str], nn.Module], batch: dict, repeats: int,
                      warmup: int, profile_memory: bool,
                      norms=NORMS) -> Dict[str, Dict[str, float]]:
    steps = {}
    for norm in norms:
        torch.manual_seed(0)
        steps[norm] = train_step(build(norm), batch)
    times = time_interleaved({norm: calls['step'] for norm, calls in steps.items()}, repeats,
                             warmup)
    results = {}
    for norm, calls in steps.items():
        result = dict(ms=times[norm], saved_bytes=saved_bytes(calls['loss'], calls['params']()))
        if profile_memory:
            result['peak_bytes'] = peak_bytes(calls['step'])
        results[norm] = result
    del steps, calls
    gc.collect()  # the models are large: free them before the next benchmark builds its own
    return results


def with_convs(model: nn.Module, conv_type: type) -> nn.Module:
    """A copy of ``model`` with every ``nn.Conv2d`` rebuilt as ``conv_type``, same weights."""
    model = copy.deepcopy(model)
    for name, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d or conv_type is nn.Conv2d:
            continue
        replacement = conv_type(conv.in_channels, conv.out_channels, conv.kernel_size,
                                stride=conv.stride, padding=conv.padding,
                                dilation=conv.dilation, groups=conv.groups,
                                bias=conv.bias is not None)
        replacement.load_state_dict(conv.state_dict())
        parent_name, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent_name), child, replacement)
    return model


def bench_backbone(size: int, depth: int, repeats: int,
                   warmup: int) -> Dict[str, Dict[str, float]]:
    """ResNet GN: training (forward + backward of all parameters) and inference times."""
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    base = ResNet(depth=depth, frozen_stages=-1, norm_cfg=GN, norm_eval=False)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        grad_outs = [torch.randn_like(out) for out in base(x)]
    models = {name: with_convs(base, conv_type) for name, conv_type in CONVS.items()}

    def training(model: nn.Module) -> Callable[[], object]:
        model.train()
        params = list(model.parameters())
        return lambda: torch.autograd.grad(model(x), params, grad_outs)

    def inference(model: nn.Module) -> Callable[[], object]:
        model.eval()

        def call():
            with torch.no_grad():
                return model(x)
        return call

    train_ms = time_interleaved({n: training(m) for n, m in models.items()}, repeats, warmup)
    results = {name: dict(train_ms=train_ms[name], train_saved_bytes=saved_bytes(
        lambda: model(x), model.parameters())) for name, model in models.items()}
    eval_ms = time_interleaved({n: inference(m) for n, m in models.items()}, repeats,
                               warmup)
    for name, result in results.items():
        result['eval_ms'] = eval_ms[name]
    return results


def model_targets(payload: dict) -> List[Dict[str, object]]:
    mask_rcnn, depth = payload['mask_rcnn']['variants'], payload['depth']
    targets = []
    if {'BCN+WS', 'GN+WS'} <= set(mask_rcnn):
        targets.append(dict(name=f'Mask R-CNN R-{depth} train step, BCN+WS / GN+WS',
                            value=mask_rcnn['BCN+WS']['ms'] / mask_rcnn['GN+WS']['ms'],
                            limit=1.15))
    if 'backbone' in payload:
        backbone = payload['backbone']['variants']
        targets += [
            dict(name=f'ResNet-{depth} GN training, mmws ConvWS / Conv2d',
                 value=backbone['mmws ConvWS']['train_ms'] / backbone['Conv2d']['train_ms'],
                 limit=1.05),
            dict(name=f'ResNet-{depth} GN eval, mmws ConvWS / Conv2d',
                 value=backbone['mmws ConvWS']['eval_ms'] / backbone['Conv2d']['eval_ms'],
                 limit=1.01)]
    return check_targets(targets)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='ResNet-18 models, 64-pixel inputs, 16 RoIs, one step per variant '
                        'without warm-up (a smoke test)')
    parser.add_argument('--det-size', type=int, default=512,
                        help='Mask R-CNN input side in pixels')
    parser.add_argument('--rois', type=int, default=128,
                        help='RoIs sampled per image by Mask R-CNN (its config: 512; the GN '
                        "box head's 4 convs run on every RoI, so 512 RoIs take ~4× the time)")
    parser.add_argument('--seg-size', type=int, default=256,
                        help='DeepLabV3 input side in pixels')
    parser.add_argument('--backbone-size', type=int, default=512,
                        help='ResNet-50 input side in pixels')
    parser.add_argument('--repeats', type=int, default=3, help='timed steps per variant')
    parser.add_argument('--peak-memory', action='store_true',
                        help="also profile each variant's peak memory (about a minute per "
                        'Mask R-CNN variant)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: 2; 1 with --quick, so that the '
                        'smoke run stays fast on a loaded machine)')
    parser.add_argument('--norms', nargs='+', choices=NORMS, default=list(NORMS),
                        help='the normalizations of the detection and segmentation rows')
    parser.add_argument('--bcn-before', type=Path, default=None,
                        help='a folder with bcn.py, functional.py and load_checks.py of another '
                        f'mmws revision: adds the variant "{BEFORE}" side by side')
    parser.add_argument('--no-backbone', action='store_true',
                        help='skip the ResNet GN backbone rows (the WS convolutions)')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'models.json')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    if args.quick:
        args.det_size = args.seg_size = args.backbone_size = 64
        args.repeats, args.rois, depth, warmup = 1, 16, 18, 0
    else:
        depth, warmup = 50, 1
    profile_memory = args.peak_memory
    norms = list(args.norms)
    if args.bcn_before is not None:
        register_bcn_before(args.bcn_before)
        norms.append(BEFORE)
    payload = dict(benchmark='models', taken_at=utc_now(), revision=revision(),
                   machine=machine(), quick=args.quick,
                   repeats=args.repeats, warmup=warmup, depth=depth)
    payload['mask_rcnn'] = dict(
        config=MASK_RCNN_CONFIG, size=args.det_size, rois=args.rois,
        variants=bench_train_steps(partial(mask_rcnn_model, rois=args.rois, depth=depth),
                                   mask_rcnn_batch(args.det_size), args.repeats, warmup,
                                   profile_memory, norms))
    print(f'\nMask R-CNN R-{depth}-FPN, train step at 1×3×{args.det_size}², {args.rois} '
          'RoIs:\n' + steps_table(payload['mask_rcnn']['variants']), flush=True)
    payload['deeplabv3'] = dict(
        config=DEEPLABV3_CONFIGS[depth], size=args.seg_size,
        variants=bench_train_steps(partial(deeplabv3_model, size=args.seg_size, depth=depth),
                                   deeplabv3_batch(args.seg_size), args.repeats, warmup,
                                   profile_memory, norms))
    print(f'\nDeepLabV3 R-{depth}-D8, train step at 1×3×{args.seg_size}²:\n' +
          steps_table(payload['deeplabv3']['variants']), flush=True)
    if not args.no_backbone:
        payload['backbone'] = dict(size=args.backbone_size, variants=bench_backbone(
            args.backbone_size, depth, args.repeats, warmup))
        print(f'\nResNet-{depth} GN backbone at 1×3×{args.backbone_size}²:\n' +
              backbone_table(payload['backbone']['variants']))
    payload['targets'] = model_targets(payload)
    print('\nTargets:\n' + targets_table(payload['targets']))
    write_json(args.out, payload)
    print(f'\nwrote {args.out}')
    return payload


if __name__ == '__main__':
    main(sys.argv[1:])
