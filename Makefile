# elrt-codesign: train -> export -> hardware -> verify.
#
#   make setup      install the package and every tool it uses (PyPI only; CPU torch)
#   make demo       the main job end to end on the embedded digits data set
#   make test       the fast test suite (every path at a small size)
#   make test-slow  the slow tests (long simulations, full training, synthesis)

PYTHON ?= python3
RUN    ?= runs/demo
PYTEST ?= $(PYTHON) -m pytest

.PHONY: setup test test-slow demo help

help:
	@sed -n '3,8p' Makefile

setup:
	$(PYTHON) -m pip install -q -e '.[all]'

test:
	$(PYTEST) -q -m "not slow"

test-slow:
	$(PYTEST) -q -m slow

demo:
	$(PYTHON) model/train_qat.py --run-name $(notdir $(RUN)) --out-dir $(dir $(RUN))
	$(PYTHON) -m model.export $(RUN) --qonnx $(RUN)/model.onnx
	$(PYTHON) -m model.verify $(RUN)
	$(MAKE) -C hw sim ARTIFACT=$(RUN)/artifact PYTHON=$(PYTHON)
	$(PYTHON) -m deploy.hls4ml --artifact $(RUN)/artifact --inputs $(RUN)/test_inputs.npy \
		--backend Vitis --part xc7a35ticsg324-1L --clock-ns 10 --out $(RUN)/hls4ml
