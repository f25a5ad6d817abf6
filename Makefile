# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/mailgate.example.toml
MAILGATE := $(BIN)/mailgate --config $(CONFIG)
DEMO_SITE   := 1234
DEMO_EDITOR := editor@example.org

.PHONY: run test install lint bench clean

$(BIN)/mailgate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/mailgate

install: $(BIN)/mailgate

# Embedded default: SQLite in var/, SMTP on 127.0.0.1:2525, outgoing mail into var/maildir.
run: install
	$(MAILGATE) db upgrade
	$(MAILGATE) sites list --json | grep -q '"$(DEMO_SITE)"' || \
		$(MAILGATE) sites add $(DEMO_SITE) "Demo website"
	$(MAILGATE) editors list --json | grep -q '"$(DEMO_EDITOR)"' || \
		$(MAILGATE) editors add $(DEMO_SITE) $(DEMO_EDITOR) --name "Demo Editor" \
		--phone "+32 470 00 00 00"
	exec $(MAILGATE) serve

test: install
	$(BIN)/ruff check mailgate tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check mailgate tests bench

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf var .pytest_cache
