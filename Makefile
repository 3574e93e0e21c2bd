# Quire: `make run` to start everything, `make test` to run the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt | sha1sum | cut -c1-12)

.PHONY: install services stop status migrate run test lint system-deps clean-data bench

$(STAMP): requirements/base.txt requirements/local.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements/local.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

services: install  ## start embedded PostgreSQL+pgvector and Redis (idempotent)
	@$(PY) -m apps.core.devservices start

stop:  ## stop the embedded services (data is kept in .data/)
	@test -x $(PY) && $(PY) -m apps.core.devservices stop || true

status:
	@$(PY) -m apps.core.devservices status

migrate: services
	$(PY) manage.py migrate --noinput

run: migrate  ## the whole site on http://127.0.0.1:8000 with a Celery worker
	@$(PY) manage.py ensure_demo_user
	@$(PY) manage.py load_demo_content
	@$(PY) manage.py prepare_embedding_models
	@echo "Quire is starting on http://127.0.0.1:8000  (Ctrl-C stops the app and worker; 'make stop' stops the data services)"
	@$(VENV)/bin/honcho -f Procfile start

# Browser tests drive Debian's chromium; as root we install it ourselves.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/lib/chromium/chromium ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "Installing chromium (browser tests)..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: sudo apt-get install chromium (browser tests will be skipped)"; fi; \
	fi

test: services system-deps  ## the full suite against real services
	$(PY) manage.py makemigrations --check --dry-run --settings=config.settings.test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: migrate
	$(PY) manage.py bench $(NAME)
