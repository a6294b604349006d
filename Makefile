# The two commands of README: `make repro` and `make test`. Each creates .venv first, when it
# is missing or its requirements changed: `make repro` installs requirements.txt (what the
# pipeline needs), `make test` requirements-dev.txt (that, plus the test and lint tools).
VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Where the lock must install (uv's names); Windows resolves too, but is not tested.
LOCK_PLATFORMS := x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu aarch64-apple-darwin
# Each lock with the oldest macOS it installs on (arm64): ai-edge-litert's wheels need 12,
# onnxruntime's (dev only) 14.
LOCK_FILES := requirements.txt:12.0 requirements-dev.txt:14.0
UV_COMPILE := uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock"

.PHONY: repro test lint exps bench pictures docs best print-best clean-venv lock check-lock

# metrics/machine.json names the machine that trained the committed metrics (rewritten only
# when train wrote other bits: benchmarks/machine.py).
repro: $(STAMP)
	dvc repro
	python -m benchmarks.machine --record metrics/machine.json

# Two workers (pytest-xdist), fed as tests/conftest.py says: the end-to-end project's DVC
# runs on one while the other runs the rest, a test at a time.
test: $(DEV_STAMP)
	pytest -n 2

lint: $(DEV_STAMP)
	ruff check . && ruff format --check .

# The experiments table, narrow enough for a 120-column terminal (docs/experiments.md): the
# params that differ between rows, validation and test accuracy (eval.json's
# `accuracy`), TFLite's accuracy. Left out: dates, dependency hashes (stages/, loopline/, data/,
# models/), losses, training metrics and the TFLite model's size.
EXPS_DROP := Created|stages/|loopline/|data/|models/|train\.|.*loss|tflite_bytes
EXPS_KEEP := ^(accuracy|tflite_accuracy|validation\.accuracy)$$
exps: $(STAMP)
	dvc exp show --only-changed --drop '$(EXPS_DROP)' --keep '$(EXPS_KEEP)'

bench: $(STAMP)
	python -m benchmarks.train_speed

# README's two pictures, from the last `dvc repro` (needs Chromium): docs/make_pictures.py.
pictures: $(STAMP)
	python docs/make_pictures.py

# Every measured number of README.md and docs/*.md, from the committed results files:
# docs/generate.py says how a generated block works and how to add one.
docs: $(STAMP)
	python docs/generate.py

# The strongest-fastest recipe: the `fast` model (loopline/model.py), 3 epochs of batch 128
# with a one-cycle schedule peaking at 0.006, Adam's beta_2 at 0.99 and label smoothing 0.1,
# without XLA (max pooling has no deterministic XLA gradient: params.py refuses the
# combination), one step per call (without XLA, more steps per program only lengthen the
# first trace). Mixed bfloat16 where the CPU has AMX, the bfloat16 matrix units that make
# it about twice as fast as float32; without them bfloat16 is slower than float32, so
# float32 there. docs/research-log.md says how it was chosen. `make best` replaces an experiment
# named best, if any; `make print-best` prints the overrides (benchmarks/time_to_accuracy.py
# reads them).
BEST_PRECISION := $(shell grep -qs amx_bf16 /proc/cpuinfo && echo mixed_bfloat16 || echo float32)
BEST := -S model=fast -S epochs=3 -S batch_size=128 -S learning_rate=0.006 \
	-S learning_rate_schedule=onecycle -S adam_beta_2=0.99 -S label_smoothing=0.1 \
	-S precision=$(BEST_PRECISION) -S jit_compile=false -S steps_per_execution=1
best: $(STAMP)
	dvc exp remove best 2>/dev/null || true
	dvc exp run -n best $(BEST)

print-best:
	@echo $(BEST)

# pip checks every file against the lock's hashes (--require-hashes).
$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements.txt
	touch $(STAMP)

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements-dev.txt
	touch $(DEV_STAMP)

# Re-pin both locks from the .in files, for every platform at once. uv keeps the versions
# already pinned unless a .in file asks otherwise; to move one package on:
# `uv pip compile ... --upgrade-package NAME` (the commands below), then `make check-lock`.
lock: $(DEV_STAMP)
	$(UV_COMPILE) requirements.in -o requirements.txt
	$(UV_COMPILE) -c requirements.txt requirements-dev.in -o requirements-dev.txt

# Resolve each lock for each platform from the package index alone (no emulation): fails when
# a pinned version has no wheel for a platform, or a platform needs a package the lock lacks
# (--require-hashes: every package installed must be in the file).
check-lock: $(DEV_STAMP)
	@target=$$(mktemp -d) && trap 'rm -rf "$$target"' EXIT && \
	for platform in $(LOCK_PLATFORMS); do \
	  for lock in $(LOCK_FILES); do \
	    file=$${lock%%:*}; \
	    MACOSX_DEPLOYMENT_TARGET=$${lock##*:} uv pip install --quiet --dry-run \
	      --require-hashes --python-version 3.11 --python-platform $$platform \
	      --target "$$target" -r $$file || exit 1; \
	    echo "$$file: resolves for $$platform"; \
	  done; \
	done

clean-venv:
	rm -rf $(VENV)
