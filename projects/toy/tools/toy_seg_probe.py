"""Does a toy-pretrained classifier know the shapes once they sit in a scene?

The toy DeepLabV3 runs of mmws 0.2 (SGD, 96 px crops, output stride 8) did not tell the shapes
apart (README, "Toy segmentation"), even when fine-tuned from, or frozen on, a ResNet-18
pretrained on the toy classification crops (about 88 % top-1). This script measures why, on the
val scenes of the toy VOC/COCO data:

1. **The classifier on scene objects.** Each annotated object is cut out of its val scene as a
   square centred on its box and resized to the classifier's 64 px, with three contexts: the
   side 1.3x the box's longer side (as in the classification data, whose crops are 1.1-1.5x),
   a 64 px window at native scale (the objects are 26-80 px), and 2.5x the box. Top-1 over the
   four shapes (a background answer counts as wrong).
2. **A linear probe on the segmentation features.** The pretrained backbone, loaded into the
   toy DeepLabV3's ResNet-18 dilated to output stride 8 (as in those runs) and frozen, encodes
   each scene; its last stage's features are averaged over each object's mask. A linear
   classifier trained on the objects of 300 train scenes (Adam, 300 full-batch steps) is scored
   on those of the 80 val scenes, against the same probe on a randomly initialised backbone.

    .venv/bin/python projects/toy/tools/pretrain_toy_backbone.py projects/toy/configs/resnet18_gn_1xb32-toy_cls.py --force
    .venv/bin/python projects/toy/tools/toy_seg_probe.py \\
        --classifier work_dirs/resnet18_gn_1xb32-toy_cls/iter_400.pth

(the pretraining tool keeps the whole classifier, head included, in its work directory). About
two minutes on one CPU thread; writes ``projects/toy/results/toy_seg_probe.json``.
"""
import argparse
import json
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mmws  # noqa: F401  (registers the datasets, layers and the classifier)
import mmws_toy.classifier  # noqa: F401
from mmws.checkpoint import safe_loading
from mmws_toy.classification import crop_square
from mmws_toy.scenes import ToySpec
from mmws.registry import MODELS

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
CLASSIFIER_CONFIG = 'projects/toy/configs/resnet18_gn_1xb32-toy_cls.py'
SEGMENTER_CONFIG = 'projects/toy/configs/deeplabv3_r18-d16_gn_1xb1-toy_voc.py'
# mmseg's "d8" backbone: all four stages of ResNet-18, as in those runs (the toy segmenter now
# uses three).
OUTPUT_STRIDE_8 = dict(num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                       strides=(1, 2, 1, 1))
CONTEXTS = {'box x1.3 (as the training crops)': 1.3, 'native 64 px window': None,
            'box x2.5': 2.5}


def normalise(preprocessor, images: List[np.ndarray]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB images to the networks' ``(N, 3, H, W)`` input, with the toy
    classifier's data preprocessor (the toy detectors' and segmenters' RGB mean and std)."""
    inputs = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
              for image in images]
    return preprocessor(dict(inputs=inputs), False)['inputs']


def object_crop(image: np.ndarray, mask: np.ndarray, scale) -> np.ndarray:
    """A 64 px square around the object's box (``scale`` x its longer side, or 64 px), cut
    as the classification data cuts its crops."""
    ys, xs = np.nonzero(mask)
    center = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
    side = 64.0 if scale is None else scale * (max(np.ptp(xs), np.ptp(ys)) + 1)
    return crop_square(image, center, side, (64, 64))


@torch.no_grad()
def classifier_accuracy(classifier, scenes) -> Dict[str, float]:
    """Top-1 of the classifier on the val scenes' objects, per crop context."""
    results = {}
    for name, scale in CONTEXTS.items():
        crops, labels = [], []
        for scene in scenes:
            for instance in scene.instances:
                crops.append(object_crop(scene.image, instance.mask, scale))
                labels.append(instance.category + 1)  # class 0 is background
        inputs = normalise(classifier.data_preprocessor, crops)
        features = classifier.backbone(inputs)[-1].mean((2, 3))
        predicted = classifier.head(features).argmax(1)
        results[name] = (predicted == torch.tensor(labels)).float().mean().item()
    return results


@torch.no_grad()
def pooled_features(backbone, preprocessor,
                    scenes) -> Tuple[torch.Tensor, torch.Tensor]:
    """Last-stage features averaged over each object's mask, and the objects' shapes."""
    features, labels = [], []
    for scene in scenes:
        stage = backbone(normalise(preprocessor, [scene.image]))[-1][0]
        size = stage.shape[1:]
        for instance in scene.instances:
            weight = F.adaptive_avg_pool2d(
                torch.from_numpy(instance.mask.astype(np.float32))[None, None], size)[0, 0]
            features.append((stage * weight).sum((1, 2)) / weight.sum())
            labels.append(instance.category)
    return torch.stack(features), torch.tensor(labels)


def linear_probe(train: Tuple[torch.Tensor, torch.Tensor],
                 val: Tuple[torch.Tensor, torch.Tensor]) -> Dict[str, float]:
    """Train and val accuracy of a linear classifier on standardised features."""
    torch.manual_seed(0)
    mean, std = train[0].mean(0), train[0].std(0) + 1e-6
    x_train, x_val = (train[0] - mean) / std, (val[0] - mean) / std
    linear = torch.nn.Linear(x_train.shape[1], 4)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(linear(x_train), train[1]).backward()
        optimizer.step()
    with torch.no_grad():
        return dict(train=(linear(x_train).argmax(1) == train[1]).float().mean().item(),
                    val=(linear(x_val).argmax(1) == val[1]).float().mean().item())


def segmentation_backbone(checkpoint):
    """The toy DeepLabV3's ResNet-18 at output stride 8, random or loaded from ``checkpoint``."""
    cfg = Config.fromfile(osp.join(ROOT, SEGMENTER_CONFIG))
    init_default_scope('mmseg')
    backbone = MODELS.build(
        dict(cfg.model.backbone, type='mmseg.ResNet', init_cfg=None, **OUTPUT_STRIDE_8))
    if checkpoint is not None:
        with safe_loading():  # a training checkpoint: weights only, MMEngine types allowed
            load_checkpoint(backbone, checkpoint, map_location='cpu',
                            revise_keys=[(r'^backbone\.', '')], strict=False)
    backbone.eval()  # mmseg's ResNet.train() returns None, so eval() does too
    return backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--classifier', required=True,
                        help='the whole toy classifier checkpoint (backbone and head)')
    parser.add_argument('--train-scenes', type=int, default=300)
    parser.add_argument('--val-scenes', type=int, default=ToySpec().num_val)
    parser.add_argument('--out', default=osp.join(ROOT, 'projects/toy/results/toy_seg_probe.json'))
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ToySpec()
    train_scenes = [spec.scene('train', i) for i in range(args.train_scenes)]
    val_scenes = [spec.scene('val', i) for i in range(args.val_scenes)]

    init_default_scope('mmdet')
    classifier = MODELS.build(Config.fromfile(osp.join(ROOT, CLASSIFIER_CONFIG)).model)
    with safe_loading():
        load_checkpoint(classifier, args.classifier, map_location='cpu', strict=True)
    record = dict(classifier=args.classifier, objects=dict(
        train=sum(len(s.instances) for s in train_scenes),
        val=sum(len(s.instances) for s in val_scenes)))
    record['classifier_top1_on_val_scene_objects'] = classifier_accuracy(
        classifier.eval(), val_scenes)
    probes = {}
    for name, checkpoint in (('toy-pretrained', args.classifier), ('random init', None)):
        backbone = segmentation_backbone(checkpoint)
        probes[name] = linear_probe(
            pooled_features(backbone, classifier.data_preprocessor, train_scenes),
            pooled_features(backbone, classifier.data_preprocessor, val_scenes))
    record['mask_pooled_linear_probe'] = probes
    labels = [i.category for s in val_scenes for i in s.instances]
    record['val_majority_shape_share'] = float(np.bincount(labels).max() / len(labels))
    print(json.dumps(record, indent=1))
    with open(args.out, 'w') as f:
        json.dump(record, f, indent=1)


if __name__ == '__main__':
    main()
