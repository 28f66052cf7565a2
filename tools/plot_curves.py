"""Draw the loss and AP/mIoU curves of a training run to a PNG.

    python tools/plot_curves.py WORK_DIR [--out curves.png] [--metrics coco/bbox_mAP ...]
"""
from mmws.apis.plot import main

if __name__ == '__main__':
    main()
