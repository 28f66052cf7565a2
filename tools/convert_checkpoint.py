"""Convert a released GN+WS / BCN+WS ImageNet ResNet to OpenMMLab ``ResNet`` backbone weights.

Example::

    python tools/convert_checkpoint.py rn50_bcn_ws.pth checkpoints/resnet50_bcn_ws.pth

then, in a config, ``backbone=dict(..., conv_cfg=<printed>, norm_cfg=<printed>,
init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50_bcn_ws.pth'))``.
"""
import argparse
import sys
from typing import List, Optional

from mmws.checkpoint import LAYOUTS, CheckpointError, ConversionError, convert_checkpoint


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('source', help='source checkpoint (.pth/.pth.tar, or Detectron .pkl)')
    parser.add_argument('output', help='converted checkpoint to write')
    parser.add_argument('--layout', choices=sorted(LAYOUTS),
                        help='source layout (default: detected from the keys)')
    parser.add_argument('--allow-partial', action='store_true',
                        help='write the checkpoint even if tensors are left over or missing')
    parser.add_argument('--trust-source', action='store_true',
                        help='unpickle the source without restriction (runs code the file names:'
                        ' only for files you trust); by default a .pth may hold only tensors and '
                        'the types MMEngine checkpoints hold, a .pkl only numpy arrays')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        report = convert_checkpoint(args.source, args.output, args.layout, args.allow_partial,
                                    args.trust_source)
    except (CheckpointError, ConversionError) as error:
        print(f'error: {error}\nnothing written', file=sys.stderr)
        return 1
    print(report.format())
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
