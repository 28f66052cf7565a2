"""Write the embedded toy datasets (``projects/toy/tools/make_toy_data.py``).

By default each goes where the toy configs read it: ``data/<name>`` in the mmws repository
(the configs anchor ``data_root`` at their own location), whatever the working directory.
"""
import argparse
import os.path as osp
from typing import Callable, Dict, Optional, Sequence, Tuple

from .coco import ensure_toy_coco
from .scenes import ToySpec
from .voc import ensure_toy_voc

# The repository holding the package (an editable install or a checkout on the path).
REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
# name -> (writer(root, spec) -> wrote, folder under REPO/data: the toy configs' data_root)
DATASETS: Dict[str, Tuple[Callable[[str, ToySpec], bool], str]] = {
    'coco': (ensure_toy_coco, 'toy_coco'),
    'voc': (ensure_toy_voc, 'toy_voc'),
}


def default_root(dataset: str) -> str:
    """The absolute directory the toy configs read ``dataset`` from.

    Raises:
        FileNotFoundError: mmws_toy is not installed from its repository (no
            ``projects/toy/configs/`` beside the package), so there is no such directory: pass a
            root.
    """
    if not osp.isdir(osp.join(REPO, 'projects', 'toy', 'configs')):
        raise FileNotFoundError(f'mmws_toy is not installed from its repository ({REPO} has no '
                                'projects/toy/configs/ folder): pass the directory to write to '
                                '(--root)')
    return osp.join(REPO, 'data', DATASETS[dataset][1])


def make_toy_data(dataset: str, root: Optional[str] = None, **spec) -> Tuple[str, bool]:
    """Write toy dataset ``dataset`` unless ``root`` already holds it.

    Args:
        dataset: A key of :data:`DATASETS`.
        root: Where to write (default: :func:`default_root`, where the toy configs read).
        **spec: :class:`~mmws_toy.ToySpec` fields (``num_train``, ``size``, ...).

    Returns:
        ``(root, wrote)``.
    """
    if dataset not in DATASETS:
        raise ValueError(f'dataset must be one of {sorted(DATASETS)}, got {dataset!r}')
    root = root or default_root(dataset)
    return root, DATASETS[dataset][0](root, ToySpec(**spec))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = ToySpec()
    parser = argparse.ArgumentParser(description='Write an embedded toy dataset')
    parser.add_argument('--dataset', choices=sorted(DATASETS), default='coco')
    parser.add_argument('--root', help='output directory (default: data/<dataset> in the mmws '
                        'repository, where the toy configs read, from any working directory)')
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
    print(f'{"wrote" if wrote else "already complete:"} {args.dataset} toy dataset in '
          f'{osp.abspath(root)}')
    return root, wrote
