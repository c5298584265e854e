# cxr-node: one entry point for setting up, running, checking and testing.
#   make run    set everything up and start the node on the embedded queue (port 11112)
#   make test   set everything up and run lint, type checks and the whole test suite

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cxr-node-installed
PORT ?= 11112
AE_TITLE ?= CXR_NODE
DATA_DIR ?= var
HTTP_PORT ?= 8080
DESTINATION ?=
SYSTEM_TOOLS := storescu storescp echoscu dsrdump dciodvfy redis-server Orthanc openssl chromium
SYSTEM_PACKAGES := dcmtk dicom3tools redis-server orthanc orthanc-dicomweb openssl chromium
SYSTEM_FILES := /usr/share/orthanc/plugins/libOrthancDicomWeb.so

LOCK := requirements.lock
PIP := $(BIN)/pip --quiet --disable-pip-version-check

.PHONY: install lock run demo-model system-deps lint typecheck test bench clean

install: $(STAMP)

# Exactly the versions in $(LOCK) (all of ".[worker,test,postgres]", made by `make lock`).
# torch first, the CPU build: the lock pins torch==2.13.0+cpu, which pip finds on this disk
# (elsewhere: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install), so a
# dependency can never pull the multi-GB CUDA build. Then the project itself, without deps,
# and a check that the lock still covers what pyproject.toml asks for.
$(STAMP): pyproject.toml constraints.txt $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(LOCK) "torch==2.13.0"
	$(PIP) install -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(BIN)/pip check --disable-pip-version-check
	$(BIN)/python .ci/check_lock.py worker test postgres
	@touch $(STAMP)

# Re-resolve $(LOCK) from pyproject.toml and constraints.txt (network; about 30 s).
# make lock LOCK_ARGS=--upgrade   newest allowed releases;   LOCK_ARGS="-P NAME"   one package.
lock:
	PYTHON="$(PYTHON)" LOCK="$(LOCK)" LOCK_ARGS="$(LOCK_ARGS)" bash .ci/lock

demo-model: install
	@$(BIN)/cxr-node models init-demo --if-none --data-dir $(DATA_DIR)

run: install demo-model
	@echo ""
	@echo "cxr-node: listening as $(AE_TITLE) on port $(PORT) (embedded queue; Ctrl-C stops)."
	@echo "  Send a chest radiograph:  /usr/bin/storescu -aec $(AE_TITLE) localhost $(PORT) IMAGE.dcm"
	@echo "  Check it is alive:        $(BIN)/cxr-node check --port $(PORT)"
	@echo "  See what happened:        $(BIN)/cxr-node studies --data-dir $(DATA_DIR)"
	@echo "  Results (SR + heatmap SC) are written under $(DATA_DIR)/spool/<study>/results/"
	@echo "  and sent to $(if $(DESTINATION),$(DESTINATION),no destination: make run DESTINATION=AE@HOST:PORT)."
	@echo "  The model is a DEMO (random weights, not trained): its results mean nothing clinically."
	@echo "  Worklist and API:         http://localhost:$(HTTP_PORT)/  (API docs: /api/docs)"
	@echo "  Log in as admin; on the first start serve prints its password below and keeps it in"
	@echo "  $(DATA_DIR)/initial-admin-password (more users: $(BIN)/cxr-node users add NAME --role viewer)."
	@echo ""
	exec $(BIN)/cxr-node serve --port $(PORT) --http-port $(HTTP_PORT) --ae-title $(AE_TITLE) --data-dir $(DATA_DIR) \
		$(if $(DESTINATION),--destination $(DESTINATION),)

system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
		command -v $$tool >/dev/null 2>&1 || [ -x /usr/bin/$$tool ] || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; \
	done; \
	for file in $(SYSTEM_FILES); do [ -e $$file ] || missing="$$missing $$file"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages for:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
		else \
			echo "missing tools:$$missing"; \
			echo "install them with: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
		fi; \
	fi

lint: install
	$(BIN)/ruff check cxr_node workers tests bench
	$(BIN)/ruff format --check cxr_node workers tests bench

typecheck: install
	$(BIN)/mypy

test: install system-deps lint typecheck
	$(BIN)/pytest -q

bench: install demo-model system-deps
	$(BIN)/python bench/roundtrip.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
