"""The toy segmentation probe runs end to end on a saved classifier."""
import json
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmws.registry import MODELS

REPO = Path(__file__).resolve().parents[3]
PROBE = REPO / 'projects/toy/tools/toy_seg_probe.py'


def test_toy_seg_probe_runs_on_a_saved_classifier(tmp_path):
    """The probe reads a whole toy classifier checkpoint and reports its two measurements (on a
    random classifier, a few scenes: the pipeline, not the numbers)."""
    init_default_scope('mmdet')
    root = REPO
    classifier = MODELS.build(
        Config.fromfile(str(root / 'projects/toy/configs/resnet18_gn_1xb32-toy_cls.py')).model)
    checkpoint, out = tmp_path / 'classifier.pth', tmp_path / 'probe.json'
    torch.save(dict(state_dict=classifier.state_dict()), checkpoint)
    subprocess.run([sys.executable, str(PROBE), '--classifier', str(checkpoint), '--train-scenes',
                    '8', '--val-scenes', '4', '--out', str(out)], cwd=REPO, check=True)
    record = json.loads(out.read_text())
    assert set(record['classifier_top1_on_val_scene_objects']) == {
        'box x1.3 (as the training crops)', 'native 64 px window', 'box x2.5'}
    for probe in record['mask_pooled_linear_probe'].values():
        assert 0 <= probe['val'] <= 1 and probe['train'] > 0.5  # 512 features fit a few objects
    assert record['objects']['val'] > 0
