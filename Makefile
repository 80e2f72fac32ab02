# Every target runs inside the project environment (tools/env.sh creates it on first use).
ENV := bash tools/env.sh

# The optional Detectron2 extra: its own environment (tools/env.sh, GREENMIM_MM_EXTRAS=detectron2).
ENV_D2 := GREENMIM_MM_EXTRAS=detectron2 bash tools/env.sh
PYTEST := python -m pytest -q -ra -p no:cacheprovider

.PHONY: demo test test-detectron2 env env-detectron2

## make demo: the main job (GreenMIM pre-training on generated data; lands with the pre-training issue)
demo:
	@$(ENV) python tools/demo.py

## make test: the whole test suite; tests/extra_detectron2 in the Detectron2 extra's environment
test:
	@$(ENV) $(PYTEST) tests --ignore=tests/extra_detectron2
	@$(ENV_D2) $(PYTEST) tests/extra_detectron2

## make test-detectron2: the Detectron2 tests only (creates the extra's environment on first use)
test-detectron2:
	@$(ENV_D2) $(PYTEST) tests/extra_detectron2

## make env: create the environment only, print its path
env:
	@$(ENV)

## make env-detectron2: create the Detectron2 extra's environment only, print its path
env-detectron2:
	@$(ENV_D2)
