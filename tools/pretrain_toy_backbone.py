"""Pretrain a backbone on the toy classification data and save it for the toy detectors.

    python tools/pretrain_toy_backbone.py CONFIG [--out checkpoints/toy/NAME.pth] [--seed 0]
                                         [--work-dir DIR] [--force] [--cfg-options k=v ...]

Skips training when the checkpoint exists. See :mod:`mmws.tools.pretrain`.
"""
from mmws.tools.pretrain import main

if __name__ == '__main__':
    main()
