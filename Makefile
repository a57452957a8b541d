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
	@echo "make validate - regenerate docs/validation.md from phantom cohorts (about 40 min on 2 cores)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# Debian packages the tests use: headless Chromium renders the HTML reports.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian) for the report tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: chromium could not be installed; the browser test will be skipped"; \
	  else echo "warning: chromium missing and not root: the browser test will be skipped"; fi; \
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

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
