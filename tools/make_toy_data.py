"""Write an embedded toy dataset (also written automatically on first use by the configs).

    python tools/make_toy_data.py --dataset coco [--root data/toy_coco] [--num-train 400] ...
"""
from mmws.tools.toy_data import main

if __name__ == '__main__':
    main()
