# Every target installs what it needs first (idempotent: seconds once .venv is complete).
PY := .venv/bin/python

.PHONY: install test train-toy train-toy-seg

install:
	bash tools/install.sh

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# The main job: BCN+WS Mask R-CNN at 1 img/GPU on the embedded toy COCO data (CPU, ~10 min).
train-toy: install
	$(PY) tools/train.py configs/toy/mask-rcnn_r18_fpn_bcn-ws_1xb1-toy_coco.py --work-dir work_dirs/toy_bcn-ws
	$(PY) tools/plot_curves.py work_dirs/toy_bcn-ws

# BCN+WS DeepLabV3 at 1 img/GPU on the embedded toy VOC data (CPU, ~8 min).
train-toy-seg: install
	$(PY) tools/train.py configs/toy/deeplabv3_r18-d8_bcn-ws_1xb1-toy_voc.py --work-dir work_dirs/deeplabv3_r18-d8_bcn-ws_1xb1-toy_voc
	$(PY) tools/plot_curves.py work_dirs/deeplabv3_r18-d8_bcn-ws_1xb1-toy_voc
