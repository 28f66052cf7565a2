# Every target installs what it needs first (idempotent: seconds once .venv is complete).
PY := .venv/bin/python

.PHONY: install test

install:
	bash tools/install.sh

test: install
	$(PY) -m pytest -q -p no:cacheprovider
