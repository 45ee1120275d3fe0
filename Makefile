# Two commands matter: `make run` (start a node on embedded defaults) and `make test`.
# Both create .venv, install the package and its dependencies, and build sfu._native.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NATIVE_SRC := $(wildcard native/*.pyx native/*.pxi native/*.pxd) setup.py
NATIVE_SO := $(shell ls sfu/_native*.so 2>/dev/null | head -1)
STAMP := $(VENV)/.installed

.PHONY: run test build debug lint bench bench-quick clean distclean

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel "setuptools>=77"
	$(PY) -m pip install -q "Cython>=3.0,<3.4" "numpy>=1.26"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	@touch $(STAMP)

sfu/.native-built: $(STAMP) $(NATIVE_SRC)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

build: sfu/.native-built

run: build
	@mkdir -p run
	$(VENV)/bin/sfu serve

test: build
	@tools/system-deps.sh
	$(PY) -m pytest -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sfu tests bench

debug: $(STAMP)
	SFU_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force
	@touch sfu/.native-built

bench: build
	$(PY) bench/fanout.py

bench-quick: build
	$(PY) bench/fanout.py --quick

clean:
	rm -rf build native/*.c native/*.html sfu/_native*.so sfu/.native-built

distclean: clean
	rm -rf $(VENV) *.egg-info
