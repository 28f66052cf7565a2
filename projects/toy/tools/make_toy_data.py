"""Write an embedded toy dataset (also written automatically on first use by the configs).

    python projects/toy/tools/make_toy_data.py --dataset coco [--root data/toy_coco] [--num-train 400] ...
"""
from mmws_toy.make_data import main

if __name__ == '__main__':
    main()
