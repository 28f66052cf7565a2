"""Evaluate a checkpoint of an mmdet or mmseg config (the toolboxes' ``tools/test.py`` CLI).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR]
                                           [--show] [--show-dir DIR] [--wait-time SECONDS]
                                           [--tta] [--trust-checkpoint] [--cfg-options k=v ...]
                                           [--launcher ...]

The metrics are printed and appended to ``<work-dir>/metrics.json``.
"""
import sys

from mmws.apis.runner import main, test

if __name__ == '__main__':
    sys.exit(main(test))
