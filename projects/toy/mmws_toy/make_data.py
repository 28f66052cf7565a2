"""Write the embedded toy datasets (``projects/toy/tools/make_toy_data.py``)."""
import argparse
from typing import Callable, Dict, Optional, Sequence, Tuple

from .coco import ensure_toy_coco
from .scenes import ToySpec
from .voc import ensure_toy_voc

# name -> (writer(root, spec) -> wrote, default root: the data_root of the toy configs)
DATASETS: Dict[str, Tuple[Callable[[str, ToySpec], bool], str]] = {
    'coco': (ensure_toy_coco, 'data/toy_coco'),
    'voc': (ensure_toy_voc, 'data/toy_voc'),
}


def make_toy_data(dataset: str, root: Optional[str] = None, **spec) -> Tuple[str, bool]:
    """Write toy dataset ``dataset`` unless ``root`` already holds it.

    Args:
        dataset: A key of :data:`DATASETS`.
        root: Where to write (default: the path the toy configs read).
        **spec: :class:`~mmws_toy.ToySpec` fields (``num_train``, ``size``, ...).

    Returns:
        ``(root, wrote)``.
    """
    if dataset not in DATASETS:
        raise ValueError(f'dataset must be one of {sorted(DATASETS)}, got {dataset!r}')
    writer, default_root = DATASETS[dataset]
    root = root or default_root
    return root, writer(root, ToySpec(**spec))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = ToySpec()
    parser = argparse.ArgumentParser(description='Write an embedded toy dataset')
    parser.add_argument('--dataset', choices=sorted(DATASETS), default='coco')
    parser.add_argument('--root', help='output directory (default: where the configs read)')
    parser.add_argument('--num-train', type=int, default=defaults.num_train)
    parser.add_argument('--num-val', type=int, default=defaults.num_val)
    parser.add_argument('--size', type=int, nargs=2, default=list(defaults.size),
                        metavar=('HEIGHT', 'WIDTH'))
    parser.add_argument('--max-objects', type=int, default=defaults.max_objects)
    parser.add_argument('--seed', type=int, default=defaults.seed)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, bool]:
    args = parse_args(argv)
    root, wrote = make_toy_data(args.dataset, args.root, num_train=args.num_train,
                                num_val=args.num_val, size=tuple(args.size),
                                max_objects=args.max_objects, seed=args.seed)
    print(f'{"wrote" if wrote else "already complete:"} {args.dataset} toy dataset in {root}')
    return root, wrote
