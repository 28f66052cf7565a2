"""Train an mmdet or mmseg config (mmdet's ``tools/train.py`` CLI), with mmws imported.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

See :mod:`mmws.apis.runner` for what it adds to the toolboxes' own tool.
"""
from mmws.apis.runner import distributed_teardown, train

if __name__ == '__main__':
    with distributed_teardown():
        train()
