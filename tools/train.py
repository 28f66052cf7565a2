"""Train an mmdet or mmseg config (mmdet's ``tools/train.py`` CLI), with mmws imported.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--trust-checkpoint] [--cfg-options k=v ...]
                                 [--launcher none|pytorch|slurm|mpi]

See :mod:`mmws.apis.runner` for what it adds to the toolboxes' own tool.
"""
import sys

from mmws.apis.runner import main, train

if __name__ == '__main__':
    sys.exit(main(train))
