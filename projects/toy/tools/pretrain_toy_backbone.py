"""Pretrain a backbone on the toy classification data and save it for the toy detectors.

    python projects/toy/tools/pretrain_toy_backbone.py CONFIG [--out checkpoints/toy/NAME.pth] [--seed 0]
                                         [--work-dir DIR] [--force] [--cfg-options k=v ...]

Skips training when the checkpoint exists. See :mod:`mmws_toy.pretrain`.
"""
from mmws_toy.pretrain import main

if __name__ == '__main__':
    main()
