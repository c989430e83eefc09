#!/usr/bin/env bash
# bench/qlora.py on the lent GPU machine: unpack the trimmed site folder the image lacks
# (gpu-wheels/site.tgz, see bench/README.md) onto PYTHONPATH, run, keep the whole log as
# $OUT/LOG and print only the figures and errors.
#   OUT=/some/dir bench/gpu.sh LOG [qlora.py arguments...]
set -o pipefail
log=${1:?usage: gpu.sh LOG ARGS...}
shift
[ -d /tmp/s/site ] || { mkdir -p /tmp/s && tar xzf gpu-wheels/site.tgz -C /tmp/s; } || exit 1
export PYTHONPATH=/tmp/s/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
df -h /tmp | tail -1
python3 bench/qlora.py "$@" 2>&1 | tee "${OUT:?}/$log" \
  | grep -E '^\{|^built|^run |^[a-z0-9+-]+ +[0-9,]+ |Error|error:|Traceback|^\$ |^note' | cut -c1-1200
