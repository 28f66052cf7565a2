"""DeepLabV3's head as the DeepLabV3 paper and its authors' code build it: ``mmws.DeepLabV3Head``.

mmseg's ``ASPPHead`` fuses the concatenated ASPP branches with a 3x3 convolution; the DeepLabV3
paper (Chen et al., arXiv 1706.05587, Sec. 3.3) and the code behind the WS/BCN paper's VOC
numbers (``chenxi116/DeepLabv3.pytorch``, ``deeplab.py``) fuse them with a 1x1 convolution.
This module is imported by the configs that need it (``custom_imports``), so ``import mmws``
does not import mmseg's models.
"""
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads import ASPPHead

from ..registry import MODELS


@MODELS.register_module()
class DeepLabV3Head(ASPPHead):
    """mmseg's ASPP head with a ``projection_kernel_size`` fusion of its branches.

    For a feature map ``x`` of shape ``(N, C_in, H, W)`` and ``c = channels``::

        b_0 = up(ConvModule_1x1(avgpool(x)))                      image pooling, (N, c, H, W)
        b_i = ConvModule_{1x1 if d_i == 1 else 3x3, dilation d_i}(x)    (N, c, H, W) each
        y   = ConvModule_{k x k}(concat(b_0, b_1, ..., b_D))          projection, (N, c, H, W)
        out = conv_seg(dropout(y))                                 (N, num_classes, H, W)

    ``ConvModule`` is conv → norm → activation (``conv_cfg``, ``norm_cfg``, ``act_cfg``);
    ``up`` is bilinear with the head's ``align_corners``. With ``projection_kernel_size=3``
    this is exactly mmseg's ``ASPPHead``; ``1`` is DeepLabV3's head (with ``dropout_ratio=0``
    and ``dilations=(1, 6, 12, 18)`` the authors' ``ASPP`` at output stride 16, whose only
    other difference is the order of the concatenated branches, image pooling last).

    Args:
        projection_kernel_size: Odd kernel size ``k`` of the projection, ``>= 1``.
        **kwargs: Arguments of mmseg's ``ASPPHead`` (``dilations``, ``in_channels``,
            ``channels``, ``num_classes``, ``dropout_ratio``, ``conv_cfg``, ``norm_cfg``, ...).
    """

    def __init__(self, projection_kernel_size: int = 1, **kwargs) -> None:
        if (not isinstance(projection_kernel_size, int) or projection_kernel_size < 1
                or projection_kernel_size % 2 == 0):
            raise ValueError('DeepLabV3Head needs an odd projection_kernel_size >= 1, got '
                             f'{projection_kernel_size!r}')
        super().__init__(**kwargs)
        self.projection_kernel_size = projection_kernel_size
        self.bottleneck = ConvModule(
            (len(self.dilations) + 1) * self.channels,
            self.channels,
            projection_kernel_size,
            padding=projection_kernel_size // 2,
            conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)
