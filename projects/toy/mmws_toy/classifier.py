"""A small image classifier for pretraining detector backbones on the toy classification data.

Importing this module imports mmdet (the backbone is mmdet's ``ResNet``), so it is not part of
``mmws.models``: configs name it in ``custom_imports``.
"""
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from .registry import MODELS


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """Backbone, global average pooling of its last feature map, one linear layer.

    The backbone's state-dict keys sit under ``backbone.``, so a checkpoint of this model loads
    into a detector's backbone with MMEngine's
    ``init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=...)``.

    Args:
        backbone: Config of the backbone (e.g. ``dict(type='mmdet.ResNet', depth=18, ...)``,
            with the detector's ``conv_cfg`` / ``norm_cfg``); its last output is classified.
        num_classes: Number of classes.
        in_channels: Channels of the backbone's last output.
        data_preprocessor: Config of the data preprocessor (MMEngine's
            ``ImgDataPreprocessor`` by default).
        init_cfg: MMEngine init config.
    """

    def __init__(self,
                 backbone: dict,
                 num_classes: int,
                 in_channels: int,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[torch.Tensor]] = None,
                mode: str = 'tensor') -> Union[torch.Tensor, Dict[str, torch.Tensor], List[dict]]:
        """Logits, losses or predictions, as MMEngine's ``BaseModel`` contract asks.

        Args:
            inputs: ``(N, 3, H, W)`` normalized images.
            data_samples: The ``N`` labels, 0-d int64 tensors (``'loss'`` and ``'predict'``).
            mode: ``'tensor'``: the ``(N, num_classes)`` logits; ``'loss'``:
                ``dict(loss=cross entropy)``; ``'predict'``: per sample
                ``dict(pred_label, pred_score, gt_label)``.
        """
        logits = self.head(self.backbone(inputs)[-1].mean(dim=(2, 3)))
        if mode == 'tensor':
            return logits
        labels = torch.stack(data_samples).to(logits.device)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        if mode == 'predict':
            scores = logits.softmax(dim=1)
            return [dict(pred_label=score.argmax(), pred_score=score, gt_label=label)
                    for score, label in zip(scores, labels)]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")
