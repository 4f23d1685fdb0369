#!/bin/sh
# Install torch into a venv the way `make setup` promises: usage  install_torch.sh PYTHON TORCH_SPEC [TORCH_INDEX]
#   TORCH_INDEX given          -> that index only (GPU users pick their CUDA build)
#   an NVIDIA GPU (nvidia-smi) -> the default index (its torch bundles CUDA)
#   otherwise                  -> the PyTorch CPU wheel index first (--index-url, with the default index
#                                 as --extra-index-url for torch's own dependencies), and the default
#                                 index only if the CPU index cannot be reached within a short timeout.
# Prints which index it used.
set -eu
py=$1
spec=$2
index=${3:-}
cpu_index=${NEAT_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
probe_timeout=${NEAT_TORCH_PROBE_TIMEOUT:-10}

if [ -n "$index" ]; then
    echo "torch: installing $spec from TORCH_INDEX=$index"
    exec "$py" -m pip install -q "$spec" --index-url "$index"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "torch: NVIDIA GPU found (nvidia-smi); installing $spec from the default index (CUDA build)"
    exec "$py" -m pip install -q "$spec"
fi

# The index pip uses by default: PIP_INDEX_URL, else pip's configured index-url, else PyPI.
default_index=${PIP_INDEX_URL:-}
if [ -z "$default_index" ]; then
    default_index=$("$py" -m pip config get global.index-url 2>/dev/null || true)
fi
default_index=${default_index:-https://pypi.org/simple}

# pip only warns when one of several indexes is unreachable and then takes torch from the other (the
# multi-GB CUDA build from PyPI), so whether the CPU index answers is checked first, quickly.
if "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read(1)" \
        "$cpu_index/torch/" "$probe_timeout" >/dev/null 2>&1 \
   && "$py" -m pip install -q --timeout "$probe_timeout" --retries 0 "$spec" \
        --index-url "$cpu_index" --extra-index-url "$default_index"; then
    echo "torch: installed $spec (CPU wheel) from $cpu_index"
else
    echo "torch: the PyTorch CPU index $cpu_index could not be reached; installing $spec from the default index"
    "$py" -m pip install -q "$spec"
    echo "torch: installed $spec from the default index"
fi
