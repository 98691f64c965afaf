# The two commands of the README: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install  # the demo: server (data in ./data), a rotating demo log, an agent; Ctrl-C stops it all
	$(BIN)/python -m demo --data-dir ./data --listen 127.0.0.1:9000

# Three workers on two cores: most tests wait on real servers, processes and sockets.
test: install
	$(BIN)/python -m pytest -q -n 3

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
