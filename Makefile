# Every target builds .venv first, so `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# hls.js for the player page, and Shaka Player for the tests that play the outputs in a second
# player, from npm at the versions package-lock.json pins.
NPM_STAMP := node_modules/.installed
# The browser the player tests drive: Debian's, never one Playwright downloads.
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint bench clean serve

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Installed with apt-get when missing (as root, like CI); without root the browser tests skip.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make: $(CHROMIUM) is missing and installing it needs root: browser tests will skip"; \
	fi

demo: $(STAMP) $(NPM_STAMP)
	$(BIN)/python -m engine.demo

# The service with the player, on the demo's sample: open http://127.0.0.1:8080/ and submit
# with '.venv/bin/rungs submit sample-3840x2160-10s.mp4 hls-again --watch'.
serve: $(STAMP) $(NPM_STAMP)
	$(BIN)/rungs serve --http-port 8080 --source-root demo-out --output-root demo-out \
		--data-dir demo-out/data

lint: $(STAMP)
	$(BIN)/ruff check engine tests bench
	$(BIN)/mypy engine

test: lint $(NPM_STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache
