#!/usr/bin/env bash
# What a Raspberry Pi user gets: a fresh venv with only `pip install ./runtime[tflite,test]` (the newest numpy,
# onnxruntime and ai-edge-litert the registry has). Proves torch/tensorflow/onnx are absent, runs the runtime's
# tests against the installed copy, segments the bundled sample with simpleunet-infer (ONNX and TFLite), and
# prints the timings and the venv's installed size.
# Usage: bash runtime/tools/slim_venv_check.sh [VENV_DIR]     (default: a temp folder, removed at the end)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-python3}"
if [ $# -ge 1 ]; then VENV="$1"; KEEP=1; else VENV="$(mktemp -d)/slim"; KEEP=0; fi
WORK="$(mktemp -d)"
cleanup() { rm -rf "$WORK"; if [ "$KEEP" = 0 ]; then rm -rf "$(dirname "$VENV")"; fi; }
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

t=$(now)
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager "$ROOT/runtime[tflite,test]"
echo "slim venv: installed in $(since "$t") at $VENV"
"$VENV/bin/python" -m pip list --format=freeze | grep -iE '^(numpy|onnxruntime|ai-edge-litert|ai_edge_litert|pillow|simpleunet-runtime)=' | tr '\n' ' '
echo

for mod in torch tensorflow onnx onnx2tf tf_keras; do
    if "$VENV/bin/python" -c "import $mod" 2>/dev/null; then
        echo "FAIL: '$mod' is importable in the slim venv" >&2
        exit 1
    fi
done
echo "slim venv: torch, tensorflow, onnx, onnx2tf are not importable (good)"

# Test the installed copy, not the source tree: run from an empty folder, and check where the package lives.
LOC="$(cd "$WORK" && "$VENV/bin/python" -c 'import simpleunet_runtime as r; print(r.__file__)')"
case "$LOC" in "$VENV"/*) ;; *) echo "FAIL: simpleunet_runtime imported from $LOC, not the venv" >&2; exit 1;; esac

t=$(now)
(cd "$WORK" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT/runtime/tests" \
    -c /dev/null "$ROOT/runtime/tests")
echo "slim venv: runtime tests in $(since "$t")"

SAMPLE="$("$VENV/bin/python" -c 'from simpleunet_runtime.sample import sample_dir; print(sample_dir() / "images")')"
MODELS="$(cd "$WORK" && "$VENV/bin/simpleunet-models")"
if grep -q '^simpleunet16-kvasir ' <<< "$MODELS"; then
    ONNX=(--model simpleunet16-kvasir); TFL=(--model simpleunet16-kvasir --backend tflite)
else
    echo "slim venv: no bundled simpleunet16-kvasir yet; segmenting with the test fixture models"
    ONNX=(--model "$ROOT/runtime/tests/fixtures/tiny_int8.onnx"); TFL=(--model "$ROOT/runtime/tests/fixtures/tiny_int8.tflite")
fi
for args in ONNX TFL; do
    declare -n A="$args"
    t=$(now)
    (cd "$WORK" && "$VENV/bin/simpleunet-infer" "$SAMPLE" "${A[@]}" --out "$WORK/masks-$args" --overlay -q)
    n=$(find "$WORK/masks-$args" -name '*.png' ! -name '*_overlay.png' | wc -l)
    [ "$n" -eq "$(find "$SAMPLE" -name '*.jpg' | wc -l)" ] || { echo "FAIL: $n masks written" >&2; exit 1; }
    echo "slim venv: simpleunet-infer ($args) wrote $n masks in $(since "$t") (process start included)"
done

echo "slim venv: installed size $(du -sh "$VENV" | cut -f1) in all; largest packages:"
du -s "$VENV"/lib/python3*/site-packages/* 2>/dev/null | sort -rn | \
    awk 'NR <= 8 { n = split($2, p, "/"); printf "  %7.1f MB  %s\n", $1 / 1024, p[n] }'  # no head: SIGPIPE + pipefail

# The video extra on top (opencv-python-headless, newest): the stream tests, which skipped above, now run.
t=$(now)
"$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager "$ROOT/runtime[tflite,video,test]"
"$VENV/bin/python" -m pip list --format=freeze | grep -iE '^(numpy|opencv-python-headless)=' | tr '\n' ' '
echo
(cd "$WORK" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT/runtime/tests" \
    -c /dev/null "$ROOT/runtime/tests/test_video.py" "$ROOT/runtime/tests/test_runtime_cli.py")
echo "slim venv: with the video extra, stream tests in $(since "$t")"
echo "slim venv: installed size with the video extra $(du -sh "$VENV" | cut -f1); largest packages:"
du -s "$VENV"/lib/python3*/site-packages/* 2>/dev/null | sort -rn | \
    awk 'NR <= 8 { n = split($2, p, "/"); printf "  %7.1f MB  %s\n", $1 / 1024, p[n] }'  # no head: SIGPIPE + pipefail
echo "slim venv: OK"
