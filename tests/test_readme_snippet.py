"""The README's "own config" snippets, read from README.md: they build offline and initialize as
the README says (from scratch; from converted BCN+WS weights, faked here), without a mismatch; the
own-dataset one sets the classes everywhere; the mmseg one puts WS and BCN in every slot."""
import os.path as osp
import re
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmws import BCN, ConvWS
from mmws.models.load_checks import CheckpointMismatchWarning

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
HEADING = '## Use mmws from your own mmdet/mmseg config'


def readme_snippets():
    """The python blocks of the README section, in order."""
    with open(osp.join(REPO, 'README.md')) as f:
        readme = f.read()
    section = readme.split(f'\n{HEADING}\n', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```python\n(.*?)```', section, re.S)


def snippet_name(snippet: str) -> str:
    """The file name a snippet's first comment gives it."""
    return re.match(r'# (\S+\.py): ', snippet).group(1)


@pytest.fixture(scope='module')
def snippet_files(tmp_path_factory):
    """The four snippets as config files: the mmdet from-scratch one, the pretrained and the
    own-dataset ones (both inherit it by its name), and the mmseg one."""
    scratch, pretrained, own_data, segmentation = readme_snippets()
    name = snippet_name(scratch)
    for child in (pretrained, own_data):
        assert re.search(rf"^_base_ = '\./{re.escape(name)}'$", child, re.M)
    directory = tmp_path_factory.mktemp('readme')
    files = {}
    for key, text, file_name in (('scratch', scratch, name), ('pretrained', pretrained,
                                                                 'pretrained.py'),
                                 ('own_data', own_data, snippet_name(own_data)),
                                 ('segmentation', segmentation, snippet_name(segmentation))):
        (directory / file_name).write_text(text)
        files[key] = str(directory / file_name)
    return files


@pytest.fixture(scope='module')
def configs(snippet_files):
    return (Config.fromfile(snippet_files['scratch']),
            Config.fromfile(snippet_files['pretrained']))


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope():
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    DefaultScope.get_instance('test-readme', scope_name='mmdet')
    yield
    DefaultScope._instance_dict.pop('test-readme', None)


def build_and_init(model_cfg):
    from mmdet.registry import MODELS
    model = MODELS.build(model_cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model.init_weights()
    assert not [w for w in caught if w.category is CheckpointMismatchWarning]
    model.train()
    return model


def assert_ws_and_bcn_everywhere(model, eps_inside_sqrt):
    for part in (model.backbone, model.neck):
        convs = [m for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(type(m) is ConvWS for m in convs)
        assert all(m.eps_inside_sqrt == eps_inside_sqrt for m in convs)
        norms = [m for m in part.modules() if isinstance(m, (torch.nn.GroupNorm,
                                                             torch.nn.modules.batchnorm._NormBase))]
        assert norms and all(type(m) is BCN for m in norms)


def test_the_from_scratch_snippet_trains_every_layer_from_fresh_estimates(configs):
    scratch, _ = configs
    backbone = scratch.model.backbone
    assert backbone.init_cfg is None and backbone.frozen_stages == -1  # no BN weights, no freeze
    model = build_and_init(scratch.model)
    assert_ws_and_bcn_everywhere(model, eps_inside_sqrt=False)
    assert all(p.requires_grad for p in model.backbone.parameters())
    bcns = [m for m in model.backbone.modules() if isinstance(m, BCN)]
    assert all(m.training for m in bcns)
    for m in bcns:
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert torch.equal(m.running_var, torch.ones_like(m.running_var))


def test_the_pretrained_snippet_loads_every_converted_tensor(configs, tmp_path, monkeypatch):
    _, pretrained = configs
    init_cfg = pretrained.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained'
    # A converted BCN+WS ResNet-50 (the converter's output: backbone keys under state_dict),
    # faked with random values at the path the snippet names.
    from mmdet.registry import MODELS
    backbone_cfg = pretrained.model.backbone.copy()
    backbone_cfg.init_cfg = None
    torch.manual_seed(0)
    fake = {k: torch.rand_like(v.float()).to(v.dtype) if v.is_floating_point() else v
            for k, v in MODELS.build(backbone_cfg).state_dict().items()}
    checkpoint = tmp_path / init_cfg.checkpoint
    checkpoint.parent.mkdir(parents=True)
    torch.save(dict(state_dict=fake), checkpoint)
    monkeypatch.chdir(tmp_path)

    model = build_and_init(pretrained.model)
    assert_ws_and_bcn_everywhere(model, eps_inside_sqrt=True)
    loaded = model.backbone.state_dict()
    assert loaded.keys() == fake.keys()
    for key, value in fake.items():
        assert torch.equal(loaded[key], value), key
    # The stem and the first stage are frozen, their BCNs normalize with the loaded estimates.
    frozen = [model.backbone.conv1, model.backbone.bcn1, model.backbone.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    frozen_bcns = [m for part in frozen for m in part.modules() if isinstance(m, BCN)]
    assert len(frozen_bcns) == 1 + 3 * 3 + 1 and not any(m.training for m in frozen_bcns)
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert all(m.training for m in model.backbone.layer2.modules() if isinstance(m, BCN))


def test_the_own_dataset_snippet_sets_its_classes_everywhere(snippet_files):
    cfg = Config.fromfile(snippet_files['own_data'])
    classes = cfg.classes
    roi_head = cfg.model.roi_head
    assert roi_head.bbox_head.num_classes == roi_head.mask_head.num_classes == len(classes)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.metainfo['classes'] == classes
        assert loader.dataset.data_root == cfg.data_root
    assert cfg.val_evaluator.ann_file == cfg.data_root + cfg.val_dataloader.dataset.ann_file
    # Still the snippet's model: WS and BCN in the backbone and neck, trained from scratch.
    model = build_and_init(cfg.model)
    assert_ws_and_bcn_everywhere(model, eps_inside_sqrt=False)


def test_the_mmseg_snippet_puts_ws_and_bcn_in_every_slot(snippet_files):
    import mmseg.models  # noqa: F401  (registers mmseg's modules)
    from mmseg.registry import MODELS
    cfg = Config.fromfile(snippet_files['segmentation'])
    DefaultScope.get_instance('test-readme-seg', scope_name='mmseg')
    try:
        model = MODELS.build(cfg.model)
    finally:
        DefaultScope._instance_dict.pop('test-readme-seg', None)
    for part in (model.backbone, model.decode_head, model.auxiliary_head):
        convs = [m for m in part.modules() if isinstance(m, torch.nn.Conv2d)
                 and m is not getattr(part, 'conv_seg', None)]
        norms = [m for m in part.modules()
                 if isinstance(m, (torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase))]
        assert convs and all(type(m) is ConvWS for m in convs)
        assert norms and all(type(m) is BCN for m in norms)
