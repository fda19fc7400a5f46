#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, install what is missing and
# train the MNIST-shaped Siamese CNN under MirroredStrategy with
# mixed_bfloat16 for a fixed number of steps. Prints one JSON line
# (pairs/s, input-wait share, final loss) and fails if the loss is not
# finite. Usage: bash benchmarks/gpu_check.sh [--steps 300] [...]
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "gpu_check: no nvidia-smi; running on the CPU (numbers mean little)" >&2
fi

python=${PYTHON:-python3}
if ! "$python" -c "import keras_contrastive, tensorflow" 2>/dev/null; then
  venv="${GPU_CHECK_VENV:-.venv-gpu}"
  "$python" -m venv "$venv"
  python="$venv/bin/python"
  "$python" -m pip install --quiet --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$python" -m pip install --quiet -e ".[gpu]"
  else
    "$python" -m pip install --quiet -e ".[cpu]"
  fi
fi
"$python" -c "import tensorflow as tf; print('gpu_check: TensorFlow', \
tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))" >&2

data=../shared/data/mnist_test.npz
extra=()
[ -f "$data" ] && extra=(--data "$data")
exec "$python" benchmarks/gpu_check.py "${extra[@]}" "$@"
