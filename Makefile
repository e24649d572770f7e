# The two quick-start commands of the README: `make export` (the main job) and `make test`.
# A venv with the tested stack (.ci/requirements.txt) is created on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install export test lint test-runtime-slim bench benchmarks zoo-train zoo-publish park unpark arm64 arm64-wheels clean

install: $(VENV)/.installed

# torch==2.13.0 first: an unpinned torch would pull a multi-GB CUDA build. Where pip has no CPU wheel of it at hand
# (this project's machines have one locally), point it at PyTorch's CPU index:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# The tested stack (TensorFlow 2.19, numpy 1.26 under onnx2tf's pins) has wheels for Python 3.10-3.12 only.
$(VENV)/.installed: pyproject.toml runtime/pyproject.toml .ci/requirements.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else \
	  f"error: {sys.executable} is Python {v[0]}.{v[1]}; the tested stack needs 3.10-3.12: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -r .ci/requirements.txt
	$(BIN)/pip install -q --no-deps -e ./runtime -e .
	touch $@

export: install
	$(BIN)/simpleunet-export --width 16 --int8

test: install
	$(BIN)/python -m pytest

# The lint rules are pyproject.toml's [tool.ruff]; CI fails on any finding.
lint: install
	$(BIN)/ruff check .

test-runtime-slim:
	bash runtime/tools/slim_venv_check.sh

bench: install
	$(BIN)/simpleunet-bench --device cpu

benchmarks: install
	$(BIN)/python -m simpleunet.benchmarks.run

# Train the zoo's 256-px SimpleUNet recipes one after another into runs/<recipe>, resuming any that stopped
# (finished runs are skipped in seconds). Run two queues side by side on a 2-core machine with THREADS=1 each.
# SimpleESKNet-32 is a GPU job: ZOO=simpleesknet32-n2-kvasir; the microcontroller recipes: ZOO=simpleunet8-kvasir-112
# (-96, -128). The *-qat-int7 recipes (QAT through the int7 grid, measured 2026-12-03 and not shipped:
# export/README.md) are not in the default list.
ZOO ?= simpleunet16-kvasir simpleunet16-busi simpleunet8-kvasir simpleunet32-kvasir simpleunet8-busi simpleunet32-busi \
       simpleunet8-kvasir-qat simpleunet8-busi-qat simpleunet16-busi-qat
THREADS ?= 2
zoo-train: install
	@set -e; for r in $(ZOO); do \
	  if [ -f runs/$$r/last.safetensors ]; then \
	    $(BIN)/simpleunet-train --out runs/$$r --resume --threads $(THREADS) --no-progress; \
	  else \
	    $(BIN)/simpleunet-train --recipe $$r --out runs/$$r --threads $(THREADS) --no-progress; \
	  fi; \
	done

# Ship a finished run: make zoo-publish NAME=simpleunet16-busi (runs/$(NAME) -> train/zoo/$(NAME) with its scores,
# model card and curve; that model re-exported into the runtime's bundled models, the others kept; its parity fixture).
# RUN= publishes another run folder under NAME, e.g. a fine-tune:
#   make zoo-publish NAME=simpleunet8-kvasir RUN=runs/simpleunet8-kvasir-qat
# (--int8-weights auto: train/zoo.py EXPORT_OPTIONS, which the bundled files and the benchmark use too.)
RUN ?= runs/$(NAME)
zoo-publish: install
	@test -n "$(NAME)" || { echo "zoo-publish: give NAME=<recipe>, e.g. make zoo-publish NAME=simpleunet16-busi"; exit 2; }
	rm -rf exports/runs/$(NAME)
	$(BIN)/simpleunet-export --checkpoint $(RUN) --int8 --int8-weights auto --name $(NAME) --out exports/runs/$(NAME)
	$(BIN)/python -m simpleunet.train.zoo $(RUN) --name $(NAME) --exports exports/runs/$(NAME)
	$(BIN)/simpleunet-publish $(NAME)
	$(BIN)/python tests/make_runtime_fixtures.py --zoo train/zoo/$(NAME)

# runs/ belongs to one machine; a session may end mid-run and the next start on a new machine. `make park` copies
# every run (an unfinished one with its training state) into train/parked/ to commit; `make unpark` puts them back.
park: install
	$(BIN)/python -m simpleunet.train.park park

unpark: install
	$(BIN)/python -m simpleunet.train.park unpark

# Emulated Raspberry Pi OS (Debian bookworm arm64, qemu-user) check of the slim runtime: pip install from PyPI,
# tests, simpleunet-infer/bench, masks vs x86. Needs root; see benchmarks/arm64/README.md. arm64-wheels only checks
# that pip finds aarch64 wheels for Python 3.11-3.13 (no root, no emulation).
arm64:
	bash benchmarks/arm64/run.sh

arm64-wheels:
	bash benchmarks/arm64/wheels.sh

clean:
	rm -rf $(VENV) build dist *.egg-info runtime/*.egg-info exports
