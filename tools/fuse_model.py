"""Fold WS and BCN of a trained mmdet/mmseg model into plain layers (``mmws.fuse``).

Examples::

    python tools/fuse_model.py CONFIG CHECKPOINT --out fused.pth
    python tools/fuse_model.py CONFIG CHECKPOINT --onnx model.onnx --shape 1 3 512 512 \\
        --onnx-output features

The fused checkpoint's ``state_dict`` loads into ``mmws.fuse(<model built from CONFIG>)``.
The ONNX file holds the fused model's tensor forward: ``tensor`` is the model's
``forward(inputs, mode='tensor')`` (mmseg segmentors: decode-head logits; mmdet single-stage
detectors: head outputs), ``features`` is ``extract_feat`` (backbone and neck; the tensor mode
of two-stage detectors such as Mask R-CNN needs image metas and is not exportable alone).
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import load_checkpoint
from torch import Tensor, nn

from mmws.fuse import fuse
from mmws.apis.runner import trusted_torch_load

ONNX_OUTPUTS = ('tensor', 'features')


class TensorForward(nn.Module):
    """A model's tensor-only forward, as a module ``torch.onnx.export`` can trace."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        if output not in ONNX_OUTPUTS:
            raise ValueError(f'output must be one of {ONNX_OUTPUTS}, got {output!r}')
        self.model = model
        self.output = output

    def forward(self, inputs: Tensor):
        if self.output == 'features':
            return tuple(self.model.extract_feat(inputs))
        return self.model(inputs, mode='tensor')


def build_model(config: str, checkpoint: str) -> nn.Module:
    """Build the config's model in its ``default_scope`` and load the checkpoint strictly."""
    cfg = Config.fromfile(config)  # runs custom_imports: registers mmws
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(cfg.model)
    with trusted_torch_load():
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model


def export_onnx(model: nn.Module, inputs: Tensor, path: str, output: str = 'tensor') -> List:
    """Export ``TensorForward(model, output)`` to ONNX and run it in onnxruntime.

    Returns:
        ``[(max |torch - onnxruntime|, max |torch|)]`` per output.
    """
    import onnxruntime
    wrapper = TensorForward(model, output).eval()
    with torch.no_grad():
        expected = wrapper(inputs)
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    torch.onnx.export(wrapper, (inputs, ), path, dynamo=False, opset_version=17,
                      input_names=['inputs'],
                      output_names=[f'output{i}' for i in range(len(expected))])
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    actual = session.run(None, {'inputs': inputs.numpy()})
    return [(float(np.abs(a - e.numpy()).max()), float(e.abs().max()))
            for a, e in zip(actual, expected)]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='mmdet or mmseg config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--out', help='fused checkpoint to write')
    parser.add_argument('--onnx', help='ONNX file to write (checked with onnxruntime)')
    parser.add_argument('--shape', type=int, nargs=4, default=(1, 3, 512, 512),
                        metavar=('N', 'C', 'H', 'W'), help='ONNX input shape')
    parser.add_argument('--onnx-output', choices=ONNX_OUTPUTS, default='tensor',
                        help='what the ONNX graph returns (see the module docstring)')
    args = parser.parse_args(argv)
    if not (args.out or args.onnx):
        parser.error('nothing to write: give --out and/or --onnx')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    model = fuse(build_model(args.config, args.checkpoint))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        torch.save({'state_dict': model.state_dict(),
                    'meta': {'mmws_fused': True, 'config': args.config}}, args.out)
        print(f'wrote {args.out}')
    if args.onnx:
        inputs = torch.randn(*args.shape)
        for i, (diff, scale) in enumerate(export_onnx(model, inputs, args.onnx,
                                                      args.onnx_output)):
            print(f'output{i}: max |torch - onnxruntime| = {diff:.3g} (max |output| {scale:.3g})')
        print(f'wrote {args.onnx}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
