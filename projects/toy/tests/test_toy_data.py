"""The toy data writers check every file a dataset's spec implies (a deleted or emptied file is
noticed and the dataset written again), and the toy configs and ``projects/toy/tools/make_toy_data.py`` find
the data at the same place from any working directory."""
import logging
import os
import os.path as osp
import shutil

import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger

from mmws_toy import ToySpec
from mmws_toy import classification as toy_classification
from mmws_toy import coco as toy_coco
from mmws_toy import voc as toy_voc
from mmws_toy.scenes import read_record
from mmws_toy import make_data as toy_data

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
SPEC = ToySpec(num_train=3, num_val=2, size=(48, 48), seed=5)
WRITERS = {
    'coco': (toy_coco.ensure_toy_coco, toy_coco.dataset_files),
    'voc': (toy_voc.ensure_toy_voc, toy_voc.dataset_files),
    'classification': (toy_classification.ensure_toy_classification,
                       toy_classification.dataset_files),
}


class Records(logging.Handler):
    """Keeps the messages MMEngine's current logger emits while attached."""

    def __init__(self) -> None:
        super().__init__()
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def read_all(root: str) -> dict:
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(osp.join(folder, name), 'rb') as f:
                files[osp.relpath(osp.join(folder, name), root)] = f.read()
    return files


@pytest.fixture(scope='module')
def written(tmp_path_factory) -> dict:
    """A dataset of each kind, as written: ``{kind: (root, {path: bytes})}``."""
    datasets = {}
    for kind, (ensure, _) in WRITERS.items():
        root = str(tmp_path_factory.mktemp('written') / kind)
        assert ensure(root, SPEC)
        datasets[kind] = root, read_all(root)
    return datasets


@pytest.mark.parametrize('kind', sorted(WRITERS))
def test_the_listed_files_are_exactly_the_written_ones(written, kind):
    assert sorted(written[kind][1]) == sorted(WRITERS[kind][1](SPEC) + ['spec.json'])


@pytest.mark.parametrize('kind', sorted(WRITERS))
@pytest.mark.parametrize('damage', ['delete', 'empty'])
def test_a_deleted_or_emptied_file_is_noticed_and_the_dataset_written_again(
        written, tmp_path, kind, damage):
    ensure, files = WRITERS[kind]
    root = str(tmp_path / kind)
    shutil.copytree(written[kind][0], root)
    victim = files(SPEC)[-1]
    if damage == 'delete':
        os.remove(osp.join(root, victim))
    else:
        open(osp.join(root, victim), 'w').close()
    logger, records = MMLogger.get_current_instance(), Records()
    logger.addHandler(records)
    try:
        assert ensure(root, SPEC) is True
    finally:
        logger.removeHandler(records)
    [warning] = [m for m in records.messages if 'missing or empty' in m]
    assert victim in warning
    assert read_all(root) == written[kind][1]
    assert sorted(os.listdir(tmp_path)) == [kind]  # nothing left beside it
    assert ensure(root, SPEC) is False


def test_another_spec_is_still_an_error_not_a_rewrite(tmp_path):
    root = str(tmp_path / 'coco')
    toy_coco.ensure_toy_coco(root, SPEC)
    os.remove(osp.join(root, toy_coco.dataset_files(SPEC)[-1]))
    with pytest.raises(ValueError, match='holds a toy dataset written as'):
        toy_coco.ensure_toy_coco(root, ToySpec(num_train=4, num_val=2, size=(48, 48)))
    assert read_record(root) == SPEC.record('coco')


CONFIG_ROOTS = {
    'projects/toy/configs/_base_/datasets/toy_coco_instance.py': 'toy_coco',
    'projects/toy/configs/_base_/datasets/toy_voc.py': 'toy_voc',
    'projects/toy/configs/_base_/datasets/toy_classification.py': 'toy_cls',
    'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py': 'toy_coco',
    'projects/toy/configs/deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py': 'toy_voc',
}


@pytest.mark.parametrize('config', sorted(CONFIG_ROOTS))
def test_configs_find_the_data_in_the_repository_from_any_working_directory(
        config, tmp_path, monkeypatch):
    expected = osp.join(REPO, 'data', CONFIG_ROOTS[config])
    for cwd in (REPO, str(tmp_path)):
        monkeypatch.chdir(cwd)
        cfg = Config.fromfile(osp.join(REPO, config))
        for key in ('train_dataloader', 'val_dataloader'):
            assert osp.normpath(cfg[key].dataset.data_root) == expected, (cwd, key)
        if CONFIG_ROOTS[config] == 'toy_coco':
            assert osp.normpath(cfg.val_evaluator.ann_file) == osp.join(
                expected, 'annotations', 'instances_val.json')


def test_the_tool_writes_where_the_configs_read():
    for dataset, folder in (('coco', 'toy_coco'), ('voc', 'toy_voc')):
        assert toy_data.default_root(dataset) == osp.join(REPO, 'data', folder)


def test_the_tool_without_a_repository_asks_for_a_root(monkeypatch, tmp_path):
    monkeypatch.setattr(toy_data, 'REPO', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='--root'):
        toy_data.make_toy_data('coco')
