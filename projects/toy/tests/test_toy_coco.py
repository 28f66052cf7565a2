"""The embedded toy COCO dataset: content, determinism, first-use writing, the CLI."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mmws_toy import ToySpec, ensure_toy_coco, write_toy_coco
from mmws_toy.coco import ann_file
from mmws_toy.scenes import CATEGORIES
from mmws_toy.make_data import main as make_toy_data_main

SPEC = ToySpec(num_train=6, num_val=3, size=(64, 80), max_objects=4, seed=3)


def load(root, split):
    with open(root / ann_file(split)) as f:
        return json.load(f)


def test_annotations_match_the_scenes(tmp_path):
    counts = write_toy_coco(str(tmp_path), SPEC)
    assert counts['train']['images'] == 6 and counts['val']['images'] == 3
    coco = load(tmp_path, 'train')
    assert [c['name'] for c in coco['categories']] == list(CATEGORIES)
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])
    by_image = {}
    for ann in coco['annotations']:
        by_image.setdefault(ann['image_id'], []).append(ann)
    for image in coco['images']:
        assert (tmp_path / 'train' / image['file_name']).is_file()
        assert (image['height'], image['width']) == (64, 80)
        scene = SPEC.scene('train', image['id'] - 1)
        anns = by_image.get(image['id'], [])
        assert len(anns) == len(scene.instances)
        for ann, instance in zip(anns, scene.instances):
            decoded = mask_utils.decode(ann['segmentation']).astype(bool)
            assert np.array_equal(decoded, instance.mask)
            assert ann['category_id'] == instance.category + 1
            assert ann['area'] == instance.mask.sum()
            ys, xs = np.nonzero(instance.mask)
            assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]


def test_written_data_is_deterministic_and_splits_differ(tmp_path):
    write_toy_coco(str(tmp_path / 'a'), SPEC)
    write_toy_coco(str(tmp_path / 'b'), SPEC)
    assert load(tmp_path / 'a', 'train') == load(tmp_path / 'b', 'train')
    assert (tmp_path / 'a/train/000001.jpg').read_bytes() == \
        (tmp_path / 'b/train/000001.jpg').read_bytes()
    assert (tmp_path / 'a/train/000000.jpg').read_bytes() != \
        (tmp_path / 'a/val/000000.jpg').read_bytes()


def test_ensure_writes_once_and_checks_the_spec(tmp_path):
    root = str(tmp_path / 'toy')
    assert ensure_toy_coco(root, SPEC) is True
    assert ensure_toy_coco(root, SPEC) is False
    with pytest.raises(ValueError, match='num_train'):
        ensure_toy_coco(root, ToySpec(num_train=7, num_val=3, size=(64, 80), seed=3))
    (tmp_path / 'partial').mkdir()
    (tmp_path / 'partial' / 'stray.txt').write_text('x')
    with pytest.raises(FileExistsError, match='partial'):
        ensure_toy_coco(str(tmp_path / 'partial'), SPEC)


def test_dataset_writes_on_first_use_from_the_mmdet_registry(tmp_path):
    from mmdet.registry import DATASETS
    from mmengine.registry import DefaultScope
    DefaultScope.get_instance('test-toy-coco', scope_name='mmdet')
    try:
        dataset = DATASETS.build(
            dict(type='mmws_toy.ToyCocoDataset', data_root=str(tmp_path / 'toy'),
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 spec=dict(num_train=2, num_val=3, size=(64, 64)), test_mode=True,
                 pipeline=[]))
    finally:
        DefaultScope._instance_dict.pop('test-toy-coco', None)
    assert len(dataset) == 3
    assert dataset.metainfo['classes'] == CATEGORIES
    info = dataset[0]
    assert info['img_path'].endswith('val/000000.jpg')
    assert all(0 <= i['bbox_label'] < len(CATEGORIES) for i in info['instances'])


def test_make_toy_data_cli(tmp_path, capsys):
    root = str(tmp_path / 'cli')
    args = ['--dataset', 'coco', '--root', root, '--num-train', '2', '--num-val', '1',
            '--size', '48', '48']
    assert make_toy_data_main(args) == (root, True)
    assert make_toy_data_main(args) == (root, False)
    assert 'already complete' in capsys.readouterr().out
    assert len(load(tmp_path / 'cli', 'val')['images']) == 1
