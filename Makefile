# nmbids: `make demo` runs the pipeline on a simulated dataset, `make test` runs the test suite.
# Both start from nothing: they create a virtualenv in .venv and install what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo
NPROCS ?= 2

.PHONY: help venv demo test test-fast system-deps validate bench clean

help:
	@echo "make demo   - simulate a small phantom dataset and run nmbids on it (participant + group)"
	@echo "make test   - install what is missing and run the test suite"
	@echo "make validate - regenerate docs/validation.md, docs/validation_snr.md and docs/validation_mtr.md from phantom cohorts (about 60 min on 2 cores), and docs/validation_snr_cit168.md where the CIT168 atlas is installed"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# Debian packages the tests use: headless Chromium renders the HTML reports; slurm-wlm and munge
# run a one-node SLURM cluster for tests/test_slurm.py (started and stopped by the test itself).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian) for the report tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: chromium could not be installed; the browser test will be skipped"; \
	  else echo "warning: chromium missing and not root: the browser test will be skipped"; fi; \
	fi
	@if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing slurm-wlm and munge (Debian) for the SLURM tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	      || echo "warning: slurm-wlm/munge could not be installed; the SLURM tests will be skipped"; \
	  else echo "warning: slurm-wlm/munge missing and not root: the SLURM tests will be skipped"; fi; \
	fi

demo: venv
	rm -rf $(DEMO)
	$(BIN)/nmbids-simulate $(DEMO) --n 4 --seed 1
	$(BIN)/nmbids $(DEMO)/bids $(DEMO)/derivatives participant -w $(DEMO)/work --nprocs $(NPROCS)
	$(BIN)/nmbids $(DEMO)/bids $(DEMO)/derivatives group --n-permutations 200
	@echo
	@echo "Participant reports: $$(ls $(DEMO)/derivatives/sub-*.html | tr '\n' ' ')"
	@echo "Group report:        $$(ls $(DEMO)/derivatives/group/*.html 2>/dev/null | tr '\n' ' ')"
	@echo "Measures:            $(DEMO)/derivatives/group/group_measures.tsv"
	@echo "Truth:               $(DEMO)/truth.json"

test: venv system-deps
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

validate: venv
	$(BIN)/python benchmarks/validate.py
	$(BIN)/python benchmarks/validate_snr.py
	$(BIN)/python benchmarks/validate_snr.py --atlas cit168
	$(BIN)/python benchmarks/validate_mtr.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
