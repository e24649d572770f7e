#!/usr/bin/env bash
# One chunk of a long training run on a lent GPU machine, as one command of the device tool (train/README.md,
# "Training on a lent GPU, in chunks"). It needs nothing installed: the machine's own python3 with torch, numpy,
# safetensors, tqdm and Pillow runs the toolkit from this checkout. It resumes runs/NAME when its
# last.safetensors came along (carried), trains on packed/<dataset> (carried, see train/pack.py) until MINUTES of
# wall-clock time would be passed at the next epoch's end, and puts the run's state files and the log in $OUT,
# which come back to copy into runs/NAME here.
#
#   bash train/gpu_chunk.sh RECIPE [MINUTES]     (MINUTES default 8; DEVICE=cuda by default)
#   SPEED_CHECK=1 bash train/gpu_chunk.sh ...    first times the loop before/after the GPU speed pass into
#                                                $OUT/speed.md (benchmarks/train_speed.py, about half a minute)
set -euo pipefail
recipe=${1:?usage: bash train/gpu_chunk.sh RECIPE [MINUTES]}
minutes=${2:-8}
out=${OUT:?OUT is not set: give the folder whose files come back}
name=$(basename "$recipe" .json)
run=runs/$name
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 SIMPLEUNET_DATA=${SIMPLEUNET_DATA:-$PWD/packed}

# The toolkit's import layout (pyproject.toml's package-dir) as links, so nothing needs to be installed there.
site=$(mktemp -d)
mkdir "$site/simpleunet"
cp "$repo/simpleunet/__init__.py" "$site/simpleunet/"
for d in train export benchmarks; do ln -s "$repo/$d" "$site/simpleunet/$d"; done
export PYTHONPATH="$site:$repo/runtime${PYTHONPATH:+:$PYTHONPATH}"

resume=()
if [ -f "$run/last.safetensors" ]; then resume=(--resume); fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -n "${SPEED_CHECK:-}" ]; then
    python3 -m simpleunet.benchmarks.train_speed --device "${DEVICE:-cuda}" --steps 10 --batch 8,32 \
        --models "SimpleUNet-16 N=1,SimpleESKNet-32 N=2" 2>&1 | tee "$out/speed.md" || true
fi
mkdir -p "$run"
set +e
python3 -c 'import sys; from simpleunet.train.cli import train_main; sys.exit(train_main())' \
    --recipe "$recipe" --out "$run" "${resume[@]}" --device "${DEVICE:-cuda}" --fast --max-minutes "$minutes" \
    --no-progress 2>&1 | tee "$out/train.log"
rc=${PIPESTATUS[0]}
set -e
for f in last.safetensors metrics.json config.json model.safetensors; do
    if [ -f "$run/$f" ]; then cp "$run/$f" "$out/"; fi
done
echo "chunk of $name: exit $rc; back in \$OUT: $(cd "$out" && echo *)"
exit "$rc"
