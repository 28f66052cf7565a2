"""mmws.ClassIoUMetric: mmseg's IoUMetric plus each class's IoU, against a direct count."""
import math

import numpy as np
import pytest
import torch
from mmengine.registry import METRICS

from mmws.evaluation import ClassIoUMetric

CLASSES = ('background', 'circle', 'square', 'absent')


def _sample(pred: np.ndarray, label: np.ndarray) -> dict:
    return dict(pred_sem_seg=dict(data=torch.from_numpy(pred)[None]),
                gt_sem_seg=dict(data=torch.from_numpy(label)[None]))


def test_per_class_iou_matches_a_direct_count_over_all_images():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 3, (12, 10)) for _ in range(3)]
    labels = [rng.integers(0, 3, (12, 10)) for _ in range(3)]
    labels[0][:2] = 255  # ignored pixels count in neither set
    metric = METRICS.build(dict(type='mmws.ClassIoUMetric', iou_metrics=['mIoU']))
    assert isinstance(metric, ClassIoUMetric)
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, [_sample(p, g) for p, g in zip(preds, labels)])
    results = metric.evaluate(len(preds))

    pred, label = np.concatenate(preds), np.concatenate(labels)
    pred, label = pred[label != 255], label[label != 255]
    for index, name in enumerate(CLASSES[:3]):
        inter = np.sum((pred == index) & (label == index))
        union = np.sum((pred == index) | (label == index))
        assert results[f'IoU.{name}'] == pytest.approx(100 * inter / union, abs=0.005)
    # A class in neither predictions nor labels has no IoU (NaN, as in mmseg's table), and the
    # mean over the others is IoUMetric's own mIoU.
    assert math.isnan(results['IoU.absent'])
    assert results['mIoU'] == pytest.approx(
        np.mean([results[f'IoU.{name}'] for name in CLASSES[:3]]), abs=0.01)
    assert {'aAcc', 'mIoU'} <= set(results)


def test_per_class_iou_follows_nan_to_num():
    metric = METRICS.build(dict(type='mmws.ClassIoUMetric', iou_metrics=['mIoU'], nan_to_num=0))
    metric.dataset_meta = dict(classes=CLASSES)
    pred = label = np.zeros((4, 4), dtype=np.int64)
    metric.process({}, [_sample(pred, label)])
    results = metric.evaluate(1)
    assert results['IoU.background'] == 100.0
    assert results['IoU.absent'] == 0.0
