"""BCN layers in frozen backbone stages keep their estimates through training.

The COCO configs freeze the stem and the first stage (``frozen_stages=1``, as mmdet's): mmdet's
``ResNet`` switches those modules to eval at every ``train()``, so their BCNs must normalize
with their (pretrained) estimates and never update them.
"""
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from toy_coco_config import toy_coco_header

from mmws import BCN

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_BCN = osp.join(REPO, 'projects/toy/configs/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py')
ESTIMATES = ('running_mean', 'running_var', 'num_batches_tracked')

TOY_CONFIG = """
train_dataloader = dict(
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(data_root=data_root, spec=spec, pipeline=train_pipeline))
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
train_cfg = dict(max_iters={iters}, val_interval=1000)
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=0.01))
# The RoI sampler takes every proposal, so the RoI heads' inputs do not depend on the random
# state.
model = dict(
    backbone=dict(frozen_stages={frozen_stages}),
    train_cfg=dict(rpn_proposal=dict(max_per_img=30), rcnn=dict(sampler=dict(num=512))))
default_hooks = dict(logger=dict(interval=1), checkpoint=None)
"""


def toy_config(tmp_path, frozen_stages: int, iters: int) -> Config:
    """The toy BCN+WS Mask R-CNN at test size (4 training images of 96 px, no validation)."""
    cfg = Config.fromstring(
        toy_coco_header(TOY_BCN, tmp_path / 'toy_coco') +
        TOY_CONFIG.format(iters=iters, frozen_stages=frozen_stages), '.py')
    cfg.work_dir = str(tmp_path / 'work')
    return cfg


def bcn_estimates(model) -> dict:
    return {f'{name}.{key}': getattr(module, key).clone()
            for name, module in model.named_modules() if isinstance(module, BCN)
            for key in ESTIMATES}


class PretrainedEstimates(Hook):
    """Gives every BCN non-trivial estimates (as a pretrained checkpoint would) when training
    starts, after the weights are initialized, and records them."""
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        gen = torch.Generator().manual_seed(0)
        for module in runner.model.modules():
            if isinstance(module, BCN):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
                module.num_batches_tracked.fill_(5000)
        self.estimates = bcn_estimates(runner.model)


def test_frozen_stages_keep_their_estimates_through_training(tmp_path):
    runner = Runner.from_cfg(toy_config(tmp_path, frozen_stages=1, iters=3))
    start = PretrainedEstimates()
    runner.register_hook(start)
    runner.train()
    end = bcn_estimates(runner.model)

    frozen = [k for k in end if k.startswith(('backbone.bcn1.', 'backbone.layer1.'))]
    trained = [k for k in end if k.startswith('backbone.layer2.')]
    assert len(frozen) == 3 * (1 + 4) and len(trained) == 3 * 5  # 4 (+1 downsample)
    for key in frozen:
        assert torch.equal(end[key], start.estimates[key]), key
    for key in trained:
        assert not torch.equal(end[key], start.estimates[key]), key
    assert all(int(end[k]) == 5003 for k in trained if k.endswith('num_batches_tracked'))
