# Every target runs inside the project environment (tools/env.sh creates it on first use).
ENV := bash tools/env.sh

.PHONY: demo test env

## make demo: the main job (GreenMIM pre-training on generated data; lands with the pre-training issue)
demo:
	@$(ENV) python tools/demo.py

## make test: the whole test suite
test:
	@$(ENV) python -m pytest tests -q -ra -p no:cacheprovider

## make env: create the environment only, print its path
env:
	@$(ENV)
