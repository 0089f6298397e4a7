PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test demo lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard tests drive Debian's chromium: installed here when we are root, else they
# skip (BANDITGATE_REQUIRE_BROWSER=1, as .ci/run sets, turns a missing browser into a failure).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$BANDITGATE_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the dashboard tests"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
	      || echo "chromium could not be installed: the dashboard browser tests will skip"; \
	  else \
	    echo "no chromium (apt-get install chromium as root): the dashboard browser tests will skip"; \
	  fi; }

test: $(STAMP) browser
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/banditgate demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy banditgate banditgate_app router reward_ingest trainer experiments
	$(BIN)/lint-imports

# docs/reference.md is generated from the settings classes, the spec and the CLI;
# tests/banditgate_app/test_reference.py fails when it is out of date.
docs: $(STAMP)
	$(BIN)/python -m banditgate_app.reference docs/reference.md

bench: $(STAMP)
	$(BIN)/python bench/router.py

clean:
	rm -rf $(VENV) .banditgate .pytest_cache
