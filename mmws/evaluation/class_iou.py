"""mmseg's ``IoUMetric`` with each class's IoU among its results, not only in its log table."""
from typing import Dict, List

from mmseg.evaluation import IoUMetric

from ..registry import METRICS


@METRICS.register_module()
class ClassIoUMetric(IoUMetric):
    """:class:`mmseg.evaluation.IoUMetric`, whose results also hold ``IoU.<class>`` per class.

    mmseg logs the per-class IoU as a table only; its results (what MMEngine's loggers, the
    ``metrics.json`` of :class:`~mmws.hooks.metrics_file.MetricsFileHook` and checkpoint
    selection see) hold the means. This metric adds, for every class ``c`` of the dataset, the
    value of that table, ``IoU.c = 100 · Σ|P_c ∩ G_c| / Σ|P_c ∪ G_c|`` over the evaluated images
    (rounded to 0.01; NaN for a class in neither predictions nor labels, or ``nan_to_num``), from
    ``IoUMetric.total_area_to_metrics``. Everything else is ``IoUMetric``'s, with the same
    arguments.
    """

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        total_areas = [sum(areas) for areas in zip(*results)]
        iou = self.total_area_to_metrics(*total_areas, ['mIoU'], self.nan_to_num, self.beta)['IoU']
        for name, value in zip(self.dataset_meta['classes'], iou):
            metrics[f'IoU.{name}'] = round(100 * float(value), 2)
        return metrics
