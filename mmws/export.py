"""ONNX export of an mmdet/mmseg model's tensor forward, checked in onnxruntime.

:func:`export_onnx` writes the graph of :class:`TensorForward` (``forward(inputs,
mode='tensor')`` or ``extract_feat``) with the batch, height and width of the input dynamic
unless asked for a static graph. :func:`check_onnx` runs the file in onnxruntime on real images
(prepared by the model's own ``data_preprocessor``: resize, normalization) at several sizes and
batch sizes, and compares every output with a reference model: the *unfused* model, so the
check covers the folding of WS and BCN (:func:`mmws.fuse`) and the export together.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

ONNX_OUTPUTS = ('tensor', 'features')
Size = Tuple[int, int]


class TensorForward(nn.Module):
    """A model's tensor-only forward, as a module ``torch.onnx.export`` can trace.

    ``output='tensor'`` is ``model(inputs, mode='tensor')`` (mmseg segmentors: decode-head
    logits; mmdet single-stage detectors: head outputs); ``'features'`` is
    ``model.extract_feat(inputs)`` (backbone and neck). Nested outputs are flattened into one
    tuple of tensors, in order.
    """

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        if output not in ONNX_OUTPUTS:
            raise ValueError(f'output must be one of {ONNX_OUTPUTS}, got {output!r}')
        self.model = model
        self.output = output

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        if self.output == 'features':
            result = self.model.extract_feat(inputs)
        else:
            result = self.model(inputs, mode='tensor')
        return tuple(_flatten(result))


def _flatten(result: Union[Tensor, Sequence]) -> List[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    return [tensor for item in result for tensor in _flatten(item)]


def export_onnx(model: nn.Module, example: Tensor, path: str, output: str = 'tensor',
                dynamic: bool = True, opset: int = 17) -> List[str]:
    """Export ``TensorForward(model, output)`` to ONNX, traced with ``example``.

    Args:
        model: The model (usually fused), in eval mode.
        example: An input batch ``(N, C, H, W)``.
        path: The ONNX file to write.
        output: See :class:`TensorForward`.
        dynamic: Make the input's batch, height and width (and every output's batch and, for
            4-d outputs, spatial dims) dynamic; ``False`` fixes them at ``example``'s shape.
        opset: ONNX opset.

    Returns:
        The output names, ``output0``, ``output1``, ...
    """
    wrapper = TensorForward(model, output).eval()
    with torch.no_grad():
        outputs = wrapper(example)
    names = [f'output{i}' for i in range(len(outputs))]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'inputs': {0: 'batch', 2: 'height', 3: 'width'}}
        for name, tensor in zip(names, outputs):
            axes = {0: 'batch'}
            if tensor.dim() == 4:
                axes.update({2: f'{name}_height', 3: f'{name}_width'})
            dynamic_axes[name] = axes
    torch.onnx.export(wrapper, (example, ), path, dynamo=False, opset_version=opset,
                      input_names=['inputs'], output_names=names, dynamic_axes=dynamic_axes)
    return names


def image_batch(model: nn.Module, images: Sequence[np.ndarray], size: Size,
                batch: int) -> Tensor:
    """``batch`` images (cycling through ``images``) resized to ``size = (H, W)`` and prepared
    by ``model.data_preprocessor`` in test mode (colour order, mean and std as the model
    expects): ``(batch, C, H, W)`` float."""
    import mmcv
    height, width = size
    chosen = [images[i % len(images)] for i in range(batch)]
    inputs = [torch.from_numpy(np.ascontiguousarray(
        mmcv.imresize(image, (width, height)).transpose(2, 0, 1))) for image in chosen]
    with torch.no_grad():
        return model.data_preprocessor(dict(inputs=inputs), False)['inputs'].float()


@dataclass
class OnnxCheck:
    """onnxruntime against the reference on one input batch.

    Attributes:
        shape: The input shape ``(N, C, H, W)``.
        errors: Per output, ``(max |onnx - reference|, max |reference|)``.
    """
    shape: Tuple[int, ...]
    errors: List[Tuple[float, float]]

    def relative_error(self) -> float:
        """The largest ``max |onnx - reference| / max(1, max |reference|)`` over outputs."""
        return max(diff / max(1.0, scale) for diff, scale in self.errors)

    def format(self) -> str:
        shape = 'x'.join(map(str, self.shape))
        return '\n'.join(f'{shape}: output{i} max |onnx - reference| = {diff:.3g} '
                         f'(max |reference| {scale:.3g})'
                         for i, (diff, scale) in enumerate(self.errors))


def check_onnx(path: str, reference: nn.Module, batches: Sequence[Tensor],
               output: str = 'tensor') -> List[OnnxCheck]:
    """Run the ONNX file in onnxruntime on each batch and compare with ``reference``.

    Args:
        path: An ONNX file written by :func:`export_onnx`.
        reference: The model to compare with (the unfused model), in eval mode.
        batches: Input batches ``(N, C, H, W)``, e.g. from :func:`image_batch`.
        output: What the file returns (see :class:`TensorForward`).

    Returns:
        One :class:`OnnxCheck` per batch.

    Raises:
        ValueError: If the file returns a different number of outputs, or shapes, than the
            reference.
    """
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    wrapper = TensorForward(reference, output).eval()
    checks = []
    for inputs in batches:
        with torch.no_grad():
            expected = wrapper(inputs)
        actual = session.run(None, {'inputs': inputs.numpy()})
        if len(actual) != len(expected):
            raise ValueError(f'{path} returns {len(actual)} outputs, the reference '
                             f'{len(expected)}')
        errors = []
        for i, (a, e) in enumerate(zip(actual, expected)):
            if tuple(a.shape) != tuple(e.shape):
                raise ValueError(f'{path}: output{i} has shape {tuple(a.shape)} for input '
                                 f'{tuple(inputs.shape)}, the reference {tuple(e.shape)}')
            errors.append((float(np.abs(a - e.numpy()).max()), float(e.abs().max())))
        checks.append(OnnxCheck(tuple(inputs.shape), errors))
    return checks
