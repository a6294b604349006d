# The two commands of README: `make repro` and `make test`. Both create .venv with the
# pinned dependencies first, when it is missing or requirements.txt changed.
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test lint bench clean-venv lock

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

lint: $(STAMP)
	ruff check .
	ruff format --check .

bench: $(STAMP)
	python -m benchmarks.train_speed

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Re-pin requirements.txt from requirements.in in a scratch environment.
lock:
	rm -rf /tmp/loopline-lock && python3 -m venv /tmp/loopline-lock
	/tmp/loopline-lock/bin/pip install --quiet -r requirements.in
	/tmp/loopline-lock/bin/pip freeze --exclude-editable > requirements.txt

clean-venv:
	rm -rf $(VENV)
