"""The README's "own config" snippets, read from README.md: they build offline and initialize as
the README says (from scratch; from converted BCN+WS weights, faked here), without a mismatch."""
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


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    """The two snippets as config files: the from-scratch one under the name its first comment
    gives, and the pretrained one, which inherits it by that name."""
    scratch, pretrained = readme_snippets()
    name = re.match(r'# (\S+\.py): ', scratch).group(1)
    assert re.search(rf"^_base_ = '\./{re.escape(name)}'$", pretrained, re.M)
    directory = tmp_path_factory.mktemp('readme')
    (directory / name).write_text(scratch)
    (directory / 'pretrained.py').write_text(pretrained)
    return Config.fromfile(str(directory / name)), Config.fromfile(
        str(directory / 'pretrained.py'))


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
