# ModelRollout: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need (a virtualenv in .venv, Debian packages via apt-get, the lab's
# control plane built once from Debian's kubernetes source package and cached in
# ~/.cache/modelrollout-lab).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help demo test unit lab lab-down lab-status lint bench faults crd podtemplate-schema clean

help:
	@echo "make demo      bring up the lab and watch a real rollout (promotion, then automatic rollback)"
	@echo "make test      run the whole test suite (unit, integration, lab end-to-end)"
	@echo "make unit      only the unit tests (no lab)"
	@echo "make lab       start the lab (or reuse a healthy one); make lab-down stops it"
	@echo "make lint      ruff, and mypy --strict on operator/"
	@echo "make bench     performance benchmark on the lab (see docs/performance.md)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lab: $(STAMP)
	$(PY) -m e2e.lab up

lab-down:
	@test -x $(PY) && $(PY) -m e2e.lab down || true

lab-status: $(STAMP)
	$(PY) -m e2e.lab status

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests e2e bench
	$(VENV)/bin/mypy operator/modelrollout

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

# The suite runs in two passes: everything that shares the lab peacefully in parallel
# (one file per worker), then the tests that stop or restart a shared lab component, alone.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(PY) -m e2e.lab up
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not disruptive" $(PYTEST_ARGS)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m disruptive $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: $(STAMP)
	$(PY) -m e2e.demo

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

faults: $(STAMP)
	$(PY) -m e2e.lab up
	$(VENV)/bin/pytest -q e2e/faults $(PYTEST_ARGS)

# spec.template's schema, generated from Kubernetes' PodTemplateSpec: SWAGGER is a swagger.json,
# e.g. the kubernetes 1.20.2 source tree's api/openapi-spec/swagger.json or
# `kubectl get --raw /openapi/v2` of the lab's apiserver. Then `make crd`.
podtemplate-schema: $(STAMP)
	@test -n "$(SWAGGER)" || { echo "usage: make podtemplate-schema SWAGGER=path/to/swagger.json"; exit 2; }
	$(PY) -m modelrollout.api.podtemplate_gen $(SWAGGER)

crd: $(STAMP)
	$(PY) -m modelrollout.api.crd > crds/modelrollout.yaml
	cp crds/modelrollout.yaml charts/modelrollout-operator/crds/modelrollout.yaml

clean: lab-down
	rm -rf .lab .pytest_cache .mypy_cache .ruff_cache
