"""Top-1 accuracy of a classifier (mmpretrain is not a dependency of mmws)."""
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import BaseMetric

from .registry import METRICS


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-1 accuracy in percent, ``100 · #{pred = gt} / N``, reported as ``accuracy/top1``.

    Reads the predictions of :class:`~mmws_toy.classifier.ImageClassifier`
    (``dict(pred_label=0-d tensor, gt_label=0-d tensor)`` per sample).
    """

    default_prefix = 'accuracy'

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append((int(sample['pred_label']), int(sample['gt_label'])))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        predictions, labels = torch.tensor(results).T
        return dict(top1=100.0 * (predictions == labels).double().mean().item())
