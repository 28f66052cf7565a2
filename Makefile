# Every target installs what it needs first (idempotent: seconds once .venv is complete).
PY := .venv/bin/python
TOY := projects/toy

.PHONY: install test train-toy train-toy-seg

install:
	bash tools/install.sh

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# The main job (projects/toy): pretrain a BCN+WS ResNet-18 on the embedded toy classification
# data (once: cached in checkpoints/toy/), fine-tune the BCN+WS Mask R-CNN from it at 1 img/GPU
# on the embedded toy COCO data (CPU), plot its curves and compare its AP with the expected range.
train-toy: install
	$(PY) $(TOY)/tools/pretrain_toy_backbone.py $(TOY)/configs/resnet18_bcn-ws_1xb32-toy_cls.py
	$(PY) tools/train.py $(TOY)/configs/mask-rcnn_r18-toypre_fpn_bcn-ws_1xb1-toy_coco.py --work-dir work_dirs/toy_bcn-ws --cfg-options randomness.seed=0
	$(PY) tools/plot_curves.py work_dirs/toy_bcn-ws
	$(PY) $(TOY)/tools/expected_range.py work_dirs/toy_bcn-ws

# BCN+WS DeepLabV3 at 1 img/GPU on the embedded toy VOC data, from scratch (CPU, ~9 min).
train-toy-seg: install
	$(PY) tools/train.py $(TOY)/configs/deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc.py --work-dir work_dirs/deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc
	$(PY) tools/plot_curves.py work_dirs/deeplabv3_r18-d16_bcn-ws_1xb1-toy_voc
