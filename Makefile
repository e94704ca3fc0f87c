# sdbuild: `make build` builds a recipe, `make test` runs the suite. Both create or refresh the
# virtual environment (.venv) from requirements.lock first, so a fresh clone needs nothing else.
#   make build RECIPE=sd2-ane OVERRIDES="model.source=synthetic attention=original"
#   make sweep RECIPE=tiny SWEEP="attention=original,split_einsum quantization=none,kmeans6" LAUNCHER=joblib
#   make run PROMPT="a photo of an astronaut riding a horse" [BUILD=outputs/<recipe>/<id>]

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdbuild-installed
RECIPE ?= tiny
OVERRIDES ?=
# make sweep: the values to sweep (Hydra's comma lists) and the launcher (conf/launcher/).
SWEEP ?= quantization=none,linear8
LAUNCHER ?= basic
PROMPT ?= a photo of an astronaut riding a horse
RUN_ARGS ?=
BUILD ?=
TEST_ARGS ?=
# Small recipes whose artifacts CI checks against tests/expectations/<recipe>.json.
EXPECTED_RECIPES := tiny tiny-ane
EXPECTATIONS_BUILD := .expectations-build

.PHONY: build sweep test run bench expectations schema clean-outputs venv

venv: $(STAMP)

# Rebuilt whenever the pins or the package metadata change (a stale venv is refreshed).
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

build: $(STAMP)
	$(PY) -m sdbuild recipe=$(RECIPE) $(OVERRIDES)

# One build per variant, then sweep-report.{md,csv,png} in outputs/.sweeps/<time>/.
sweep: $(STAMP)
	$(PY) -m sdbuild -m recipe=$(RECIPE) launcher=$(LAUNCHER) $(SWEEP) $(OVERRIDES)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q $(TEST_ARGS)

run: $(STAMP)
	$(PY) -m sdbuild.runner --prompt "$(PROMPT)" $(if $(BUILD),--build $(BUILD),--recipe $(RECIPE)) $(RUN_ARGS)

# After an intended change to what the small recipes build: rebuild them and rewrite their
# expectations (review the diff of tests/expectations/ before committing it).
expectations: $(STAMP)
	rm -rf $(EXPECTATIONS_BUILD)
	@for recipe in $(EXPECTED_RECIPES); do \
	  $(PY) -m sdbuild recipe=$$recipe output.dir=$(EXPECTATIONS_BUILD) || exit 1; \
	  $(PY) -m sdbuild expect --update $(EXPECTATIONS_BUILD)/$$recipe/* tests/expectations/$$recipe.json || exit 1; \
	done
	rm -rf $(EXPECTATIONS_BUILD)

# After a change to sdbuild/manifest.py: rewrite the committed JSON Schema apps validate against.
schema: $(STAMP)
	$(PY) -m sdbuild schema --out schema/manifest.schema.json

bench: $(STAMP)
	@echo "Real-size benchmarks (minutes each, ~10 GB RAM):"; ls bench/*.py

clean-outputs:
	rm -rf outputs/*/ outputs/.hydra
