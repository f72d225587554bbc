# Entry points: `make test`, `make quickstart`, `make clean`.
# `.venv` is built with Python 3.11 from requirements.txt + constraints.txt and reinstalled only
# when those change. Override the interpreter with `make PYTHON=/path/to/python3.11 ...`.

PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test quickstart clean

venv: $(STAMP)

# Check first so that an unsupported Python fails with one line, not a numpy source build.
$(VPY):
	@$(PYTHON) scripts/check_python.py
	$(PYTHON) -m venv $(VENV)

# The venv's own interpreter is checked too: a .venv made elsewhere may hold the wrong Python.
# The repo root goes on the venv's path through a .pth file: the same effect as `pip install -e .`
# without fetching an unpinned setuptools/wheel to build it, or leaving an egg-info in the repo.
$(STAMP): requirements.txt constraints.txt | $(VPY)
	@$(VPY) scripts/check_python.py
	$(VPY) -m pip install -c constraints.txt -r requirements.txt
	$(VPY) -c "import os, sysconfig; open(os.path.join(sysconfig.get_paths()['purelib'], 'efficientdet_mxnet.pth'), 'w').write(os.getcwd() + '\\n')"
	touch $@

test: venv
	$(VPY) -m pytest -q -n 2 --timeout=900 --durations=15 tests

quickstart: venv
	$(VPY) scripts/quickstart.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
