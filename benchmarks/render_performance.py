"""Render the performance tables of ``docs/performance.md`` from the benchmarks' JSON results.

Reads ``benchmarks/results/layers.json`` (``bench_layers.py``) and
``benchmarks/results/models.json`` (``bench_models.py``) and prints a markdown section: the
machine, the tables of both benchmarks and every target with its status. With ``--doc PATH`` it
also writes the section into that file between the markers :data:`BEGIN` and :data:`END`.

Run: ``.venv/bin/python benchmarks/render_performance.py [--layers PATH] [--models PATH]
[--doc docs/performance.md]``.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

from common import RESULTS_DIR, markdown_table, mib, ratio, replace_block, targets_table

REGENERATE = ('.venv/bin/python benchmarks/bench_layers.py && '
              '.venv/bin/python benchmarks/bench_models.py && '
              '.venv/bin/python benchmarks/render_performance.py --doc docs/performance.md')
NORM_COLUMNS = {'GroupNorm': 'GN', 'BatchNorm2d': 'BN', 'BN→GN': 'BN→GN',
                'authors BCN': 'authors', 'BN(estimates)→GN': 'BN(est.)→GN',
                'BCN micro': 'micro', 'BCN batch': 'batch', 'BCN sync': 'sync',
                'two-pass micro': '2-pass'}
BEGIN = '<!-- performance: rendered by benchmarks/render_performance.py --doc docs/performance.md -->'
END = '<!-- end of performance -->'


def norm_table(rows: List[Dict]) -> str:
    """Median ms per variant, then BCN's ratios to GN and to the composition it replaces, and
    the activations BCN micro / GN save for backward and their peak memory."""
    header = ['N×C×S×S'] + list(NORM_COLUMNS.values()) + [
        'micro / GN', 'batch / GN', '2-pass / GN', 'micro / BN(est.)→GN', 'batch / BN→GN',
        'saved MiB GN, micro', 'peak MiB GN, micro']
    body = []
    for row in rows:
        variants = row['variants']
        body.append(['×'.join(map(str, row['shape']))] +
                    [f'{variants[name]["ms"]:.2f}' for name in NORM_COLUMNS] + [
                        f'{ratio(row, "BCN micro", "GroupNorm"):.2f}',
                        f'{ratio(row, "BCN batch", "GroupNorm"):.2f}',
                        f'{ratio(row, "two-pass micro", "GroupNorm"):.2f}',
                        f'{ratio(row, "BCN micro", "BN(estimates)→GN"):.2f}',
                        f'{ratio(row, "BCN batch", "BN→GN"):.2f}',
                        f'{mib(variants["GroupNorm"]["saved_bytes"])}, '
                        f'{mib(variants["BCN micro"]["saved_bytes"])}',
                        f'{mib(variants["GroupNorm"]["peak_bytes"])}, '
                        f'{mib(variants["BCN micro"]["peak_bytes"])}'])
    return markdown_table(header, body)


def operators_table(rows: Dict[str, Dict]) -> str:
    """Compute operators and host syncs (and CUDA kernels, when counted) per variant."""
    with_kernels = all('kernels' in counts for counts in rows.values())
    header = ['layer', 'compute ops', 'host syncs'] + (['CUDA kernels'] if with_kernels else [])
    body = [[name, counts['compute'], counts['host_syncs']] +
            ([counts['kernels']] if with_kernels else []) for name, counts in rows.items()]
    return markdown_table(header, body)


def conv_table(rows: List[Dict], phase: str) -> str:
    """Median ms per convolution in ``phase`` ('train' or 'eval') and mmws's ratios."""
    key = f'{phase}_ms'
    names = list(rows[0]['variants'])
    header = ['N, in→out, k, S'] + names + ['mmws / Conv2d', 'mmws / mmcv', 'mmws / timm']
    body = []
    for row in rows:
        shape, variants = row['shape'], row['variants']
        body.append(
            [f'{shape["batch"]}, {shape["in_channels"]}→{shape["out_channels"]}, '
             f'{shape["kernel"]}, {shape["size"]}'] +
            [f'{variants[name][key]:.2f}' for name in names] + [
                f'{ratio(row, "mmws ConvWS", "Conv2d", key):.3f}',
                f'{ratio(row, "mmws ConvWS", "mmcv ConvWS2d", key):.3f}',
                f'{ratio(row, "mmws ConvWS", "timm StdConv2d", key):.3f}'])
    return markdown_table(header, body)


def steps_table(variants: Dict[str, Dict[str, float]]) -> str:
    """Median train-step ms per norm, ratios to GN and GN+WS, memory (peak when profiled)."""
    with_peak = all('peak_bytes' in result for result in variants.values())
    rows = []
    for norm, result in variants.items():
        rows.append([norm, f'{result["ms"]:.0f}', f'{result["ms"] / variants["GN"]["ms"]:.2f}',
                     f'{result["ms"] / variants["GN+WS"]["ms"]:.2f}',
                     mib(result['saved_bytes'])] + ([mib(result['peak_bytes'])] if with_peak
                                                    else []))
    return markdown_table(['norm', 'train step ms', '/ GN', '/ GN+WS', 'saved MiB'] +
                          (['peak MiB'] if with_peak else []), rows)


def backbone_table(variants: Dict[str, Dict[str, float]]) -> str:
    base = variants['Conv2d']
    rows = [(name, f'{r["train_ms"]:.0f}', f'{r["train_ms"] / base["train_ms"]:.3f}',
             f'{r["eval_ms"]:.0f}', f'{r["eval_ms"] / base["eval_ms"]:.3f}',
             mib(r['train_saved_bytes'])) for name, r in variants.items()]
    return markdown_table(('conv', 'train ms', '/ Conv2d', 'eval ms', '/ Conv2d',
                           'saved MiB'), rows)


def machine_line(result: Dict) -> str:
    m = result['machine']
    return (f'{m["cpu"]}, {m["cores"]} cores, torch threads: {m["threads"]}, Python '
            f'{m["python"]}, torch {m["torch"]}, {m["system"]}; taken {result["taken_at"]} at '
            f'commit `{result["revision"]}`')


def layers_section(layers: Dict) -> List[str]:
    return [
        '### Layers', '',
        f'Machine: {machine_line(layers)}. Median of at least {layers["repeats"]} interleaved '
        'calls per variant (more for fast shapes).', '',
        '**Operators** of one `layer(x).sum().backward()` in training at x = 2×64×32×32 (the '
        'loss `sum` and the backward seed included, as `benchmarks/common.operator_counts` '
        'counts them; convolutions 64→64 3×3 without bias), and of '
        'one forward under `no_grad` in `eval()` ("eval" rows). On a GPU each compute operator '
        'is at least one kernel launch; a host sync stalls the launch queue.', '',
        operators_table(layers['operators']), '',
        '**Normalizations**, forward + backward in training (gradients of the input and all '
        'affines), median ms; 32 groups. `BN→GN`: two modules; `authors`: the authors\' '
        'formulation (BN, a batch norm over the `(1, N·G, ·)` view, per-group affine); '
        '`BN(est.)→GN`: the estimate update then `F.batch_norm` with the estimates and '
        '`F.group_norm`; `micro`/`batch`/`sync`: `mmws.BCN` (one process: sync behaves as '
        'batch). "saved": activations kept for backward (parameters excluded); "peak": the '
        'profiler\'s peak memory of one step, input included.', '',
        norm_table(layers['norm']), '',
        '**Convolutions** (ResNet-50 bottleneck shapes, no bias), training forward + backward, '
        'median ms:', '',
        conv_table(layers['conv'], 'train'), '',
        '`eval()` under `torch.no_grad()`, median ms:', '',
        conv_table(layers['conv'], 'eval'), '',
    ]


def models_section(models: Dict) -> List[str]:
    mask_rcnn, deeplab, backbone = models['mask_rcnn'], models['deeplabv3'], models['backbone']
    depth = models['depth']
    return [
        '### Models', '',
        f'Machine: {machine_line(models)}. Median of {models["repeats"]} interleaved steps per '
        f'variant, after {models["warmup"]} warm-up step(s); 1 random image. A train step is '
        'the loss forward, the backward and an SGD step (learning rate 0). BN is each toolbox\'s own config; GN and GN+WS follow '
        'mmdet\'s `gn/` and `gn+ws/` configs (WS: `mmws.ConvWS`); BCN+WS replaces GN by '
        '`mmws.BCN` (micro-batch mode). "saved": activations kept for backward (parameters '
        'excluded; WS variants also keep the standardized weights).', '',
        f'**Mask R-CNN R-{depth}-FPN**, 1×3×{mask_rcnn["size"]}², {mask_rcnn["rois"]} RoIs per '
        'image (GN variants: `Shared4Conv1FCBBoxHead`):', '',
        steps_table(mask_rcnn['variants']), '',
        f'**DeepLabV3 R-{depth}-D8**, 1×3×{deeplab["size"]}² (BN: the ASPP image-pool branch\'s BN '
        'in eval mode, it sees one value per channel at 1 image):', '',
        steps_table(deeplab['variants']), '',
        f'**ResNet-{depth} GN backbone** (mmdet `ResNet`, all stages trainable), '
        f'1×3×{backbone["size"]}², every conv replaced (same weights); train = forward + '
        'backward, eval = `eval()` under `torch.no_grad()`:', '',
        backbone_table(backbone['variants']), '',
    ]


def render(layers: Dict, models: Dict) -> str:
    lines = [f'Regenerate with `{REGENERATE}` (about 10 minutes on 2 cores).', '']
    lines += layers_section(layers) + models_section(models)
    lines += ['### Targets', '', targets_table(layers['targets'] + models['targets']), '']
    return '\n'.join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--layers', type=Path, default=RESULTS_DIR / 'layers.json')
    parser.add_argument('--models', type=Path, default=RESULTS_DIR / 'models.json')
    parser.add_argument('--doc', type=Path,
                        help='also write the section into this file between its markers')
    args = parser.parse_args(argv)
    markdown = render(json.loads(args.layers.read_text()), json.loads(args.models.read_text()))
    if args.doc is not None:
        args.doc.write_text(replace_block(args.doc.read_text(), BEGIN, END, markdown))
    print(markdown)
    return markdown


if __name__ == '__main__':
    main(sys.argv[1:])
