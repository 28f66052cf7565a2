"""The embedded toy VOC dataset: format, determinism, first-use writing, mmseg loading."""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmws_toy import voc as toy_voc
from mmws_toy.scenes import ToySpec, read_record
from mmws_toy.voc import (CLASSES, IGNORE_INDEX, PALETTE, ToyVOCDataset, class_mask,
                                   ensure_toy_voc, write_voc_files)

SMALL = ToySpec(num_train=6, num_val=3, size=(64, 80), max_objects=3, seed=7)


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('toy') / 'toy_voc')
    assert ensure_toy_voc(root, SMALL)
    return root


def _labels(root, name):
    png = Image.open(osp.join(root, 'SegmentationClass', f'{name}.png'))
    assert png.mode == 'P'
    return np.asarray(png)


def test_voc_palette_is_pascal_colour_map():
    assert PALETTE == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert len(CLASSES) == 5 and CLASSES[0] == 'background'


def test_layout_and_split_lists(voc_root):
    for split, count in (('train', SMALL.num_train), ('val', SMALL.num_val)):
        with open(osp.join(voc_root, 'ImageSets', 'Segmentation', f'{split}.txt')) as f:
            names = f.read().split()
        assert names == [f'{split}_{i:06d}' for i in range(count)]
        for name in names:
            image = Image.open(osp.join(voc_root, 'JPEGImages', f'{name}.jpg'))
            assert image.size == (80, 64) and image.mode == 'RGB'
            assert _labels(voc_root, name).shape == (64, 80)
    assert read_record(voc_root) == SMALL.record('voc')


def test_label_maps_follow_the_scenes(voc_root):
    for index in range(SMALL.num_train):
        scene = SMALL.scene('train', index)
        labels = _labels(voc_root, f'train_{index:06d}')
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, IGNORE_INDEX}
        np.testing.assert_array_equal(labels, class_mask(scene))
        for instance in scene.instances:
            inside = labels[instance.mask]
            # The object's pixels carry its class except on its outline, which is ignored.
            assert set(np.unique(inside)) <= {instance.category + 1, IGNORE_INDEX}
            if instance.mask.sum() >= 100:
                assert (inside == instance.category + 1).any()
        assert (labels == 0).any()


def test_ignore_band_surrounds_each_object():
    scene = SMALL.scene('val', 0)
    instance = scene.instances[0]
    labels = class_mask(scene, ignore_width=2)
    ys, xs = np.nonzero(instance.mask)
    top = ys.min()
    column = xs[ys == top][0]
    # The topmost pixel of an object lies on its outline; the pixel above it is outside.
    assert labels[top, column] == IGNORE_INDEX
    if top > 0:
        assert labels[top - 1, column] == IGNORE_INDEX
    no_band = class_mask(scene, ignore_width=0)
    assert IGNORE_INDEX not in no_band
    with pytest.raises(ValueError, match='ignore_width must be >= 0, got -1'):
        class_mask(scene, ignore_width=-1)


def test_writing_is_deterministic(voc_root, tmp_path):
    write_voc_files(str(tmp_path), SMALL)
    for folder in ('JPEGImages', 'SegmentationClass'):
        for name in sorted(os.listdir(osp.join(voc_root, folder))):
            with open(osp.join(voc_root, folder, name), 'rb') as a, \
                    open(osp.join(tmp_path, folder, name), 'rb') as b:
                assert a.read() == b.read(), name


def test_existing_dataset_is_kept_and_checked(voc_root, tmp_path):
    assert not ensure_toy_voc(voc_root, SMALL)
    with pytest.raises(ValueError, match='holds a toy dataset written as'):
        ensure_toy_voc(voc_root, ToySpec(num_train=7, num_val=3, size=(64, 80)))
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not a complete toy dataset'):
        ensure_toy_voc(str(junk), SMALL)


def test_writer_that_loses_the_race_discards_its_copy(tmp_path, monkeypatch):
    """Another rank completes ``root`` while this one is still writing its staging copy."""
    root = str(tmp_path / 'toy_voc')
    write = toy_voc.write_voc_files
    other_rank = []

    def slow_write(directory, spec):
        if not other_rank:  # the other rank starts later and finishes first
            other_rank.append('writing')
            other_rank.append(ensure_toy_voc(root, spec))
        return write(directory, spec)

    monkeypatch.setattr(toy_voc, 'write_voc_files', slow_write)
    assert not ensure_toy_voc(root, SMALL)
    assert other_rank == ['writing', True]
    assert sorted(os.listdir(tmp_path)) == ['toy_voc']  # no staging directory left behind
    assert read_record(root) == SMALL.record('voc')


def test_dataset_writes_on_first_use_and_loads_with_mmseg(tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    root = str(tmp_path / 'toy_voc')
    dataset = DATASETS.build(
        dict(type='mmws_toy.ToyVOCDataset',
             data_root=root,
             data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
             ann_file='ImageSets/Segmentation/val.txt',
             spec=dict(num_train=2, num_val=3, size=(64, 64)),
             pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]))
    assert isinstance(dataset, ToyVOCDataset) and len(dataset) == 3
    assert dataset.metainfo['classes'] == CLASSES
    sample = dataset[1]
    assert sample['img'].shape == (64, 64, 3)
    expected = class_mask(ToySpec(num_train=2, num_val=3, size=(64, 64)).scene('val', 1))
    np.testing.assert_array_equal(sample['gt_seg_map'], expected)


def test_dataset_needs_a_data_root():
    with pytest.raises(ValueError, match='needs a data_root'):
        ToyVOCDataset(ann_file='ImageSets/Segmentation/val.txt')


def test_make_toy_data_writes_voc(tmp_path, capsys):
    from mmws_toy.make_data import main
    root = str(tmp_path / 'voc')
    argv = ['--dataset', 'voc', '--root', root, '--num-train', '2', '--num-val', '1', '--size',
            '48', '64']
    assert main(argv) == (root, True)
    assert read_record(root) == ToySpec(num_train=2, num_val=1, size=(48, 64)).record('voc')
    assert main(argv) == (root, False)
    assert 'already complete' in capsys.readouterr().out
