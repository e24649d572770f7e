#!/usr/bin/env bash
# CI-friendly aarch64 check, no emulation: can pip install ./runtime[tflite,video] on a 64-bit Raspberry Pi OS / Linux
# aarch64 from binary wheels alone? `pip download`s the dependencies for manylinux aarch64 for each Python version,
# prints the resolved onnxruntime / ai-edge-litert / numpy / Pillow versions, the download sizes, and every package
# that has no aarch64 wheel; flags a package that resolves older on aarch64 than on this host (a missing wheel).
# Usage: bash benchmarks/arm64/wheels.sh [PYTHON_VERSION ...]      (default: 3.11 3.12 3.13)
# Env:   PYTHON (the pip to run, default python3), INDEX_URL (default https://pypi.org/simple)
# Exit:  0 when every version resolves from wheels, 1 otherwise. Needs network access to the index.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-python3}"
INDEX_URL="${INDEX_URL:-https://pypi.org/simple}"
VERSIONS=("$@"); [ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(3.11 3.12 3.13)
PLATFORMS=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64)
KEY=(onnxruntime ai_edge_litert numpy pillow opencv_python_headless)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
die() { echo "wheels.sh: $*" >&2; exit 1; }

# pip exactly as a user on a Pi gets it: none of this machine's pip settings (PIP_* variables, pip.conf files,
# local indexes, constraints).
pip_clean() {
    local unset=() v
    for v in $(env | sed -n 's/^\(PIP_[A-Z0-9_]*\)=.*/\1/p'); do unset+=(-u "$v"); done
    env "${unset[@]}" PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip "$@"
}

"$PY" -m pip --version >/dev/null 2>&1 || die "no pip for $PY; set PYTHON to a python with pip"
host="${INDEX_URL#*://}"; host="${host%%/*}"
curl -fsS -m 20 -o /dev/null "$INDEX_URL/pip/" 2>/dev/null || die "no network: cannot reach $INDEX_URL ($host)"

T0=$(now)
fail=0; summary=()
for pyv in "${VERSIONS[@]}"; do
    dest="$WORK/cp${pyv/./}"; log="$WORK/log-$pyv"
    t=$(now)
    # What this (non-aarch64) host would get for the same Python, queried alongside: an aarch64 fallback to an
    # older release shows.
    for p in onnxruntime ai-edge-litert numpy pillow opencv-python-headless; do
        (pip_clean index versions --index-url "$INDEX_URL" --only-binary=:all: --python-version "$pyv" "$p" \
            2>/dev/null | sed -n '1s/.*(\(.*\)).*/\1/p' >"$WORK/newest-$pyv-$p") &
    done
    if ! pip_clean download --index-url "$INDEX_URL" --only-binary=:all: "${PLATFORMS[@]}" --python-version "$pyv" \
            -d "$dest" "$ROOT/runtime[tflite,video]" >"$log" 2>&1; then
        fail=1
        miss="$(sed -n 's/.*Could not find a version that satisfies the requirement \([^ ;]*\).*/\1/p' "$log" | sort -u |
                tr '\n' ' ')"
        echo "Python $pyv: FAIL, no aarch64 wheel for: ${miss:-?} ($(grep -m1 -E '^ERROR' "$log" || tail -1 "$log"))"
        summary+=("| $pyv | missing: ${miss:-see log} | | | | | |")
        wait; continue
    fi
    wait
    declare -A ver=() newest=()
    for p in onnxruntime ai_edge_litert numpy pillow opencv_python_headless; do
        v="$(cat "$WORK/newest-$pyv-${p//_/-}")"; newest[$p]="${v:-?}"
    done
    for f in "$dest"/*.whl; do
        b="$(basename "$f")"; n="$(cut -d- -f1 <<<"$b" | tr 'A-Z' 'a-z')"; ver[$n]="$(cut -d- -f2 <<<"$b")"
    done
    total="$(du -cb "$dest"/*.whl | tail -1 | cut -f1)"
    echo "Python $pyv: $(ls "$dest"/*.whl | wc -l) wheels, $(awk -v b="$total" 'BEGIN { printf "%.1f MB", b / 1e6 }')" \
         "to download, resolved in $(since "$t")"
    for f in "$dest"/*.whl; do
        printf '  %8.2f MB  %s\n' "$(awk -v b="$(stat -c %s "$f")" 'BEGIN { print b / 1e6 }')" "$(basename "$f")"
    done | sort -rn
    row="| $pyv"
    for k in "${KEY[@]}"; do
        v="${ver[$k]:-}"
        if [ -z "$v" ]; then echo "  FAIL: $k was not resolved"; fail=1; v="missing"
        elif [ "${newest[$k]}" != "?" ] && [ "$v" != "${newest[$k]}" ]; then
            echo "  note: $k resolved to $v on aarch64 but to ${newest[$k]} on $(uname -m) (no aarch64 wheel for cp${pyv/./} there)"
            v="$v ($(uname -m): ${newest[$k]})"
        fi
        row+=" | $v"
    done
    summary+=("$row | $(awk -v b="$total" 'BEGIN { printf "%.1f MB", b / 1e6 }') |")
    unset ver newest
done

echo
echo "| Python | onnxruntime | ai-edge-litert | numpy | Pillow | opencv-python-headless | download |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
echo
echo "wheels.sh: $([ $fail = 0 ] && echo OK || echo FAIL) in $(since "$T0") (platform manylinux_2_28/2_27/2014 aarch64, index $INDEX_URL)"
exit $fail
