#!/usr/bin/env bash
# Emulated Raspberry Pi OS check: does the slim runtime install, pass its tests and segment correctly on Debian
# bookworm arm64 (what 64-bit Raspberry Pi OS is), with only PyPI's aarch64 wheels?
#
#   1. builds (once, then cached) a bookworm arm64 userland with debootstrap, run on x86 through qemu-user binfmt;
#   2. in a fresh copy of it (chroot): python3 -m venv with the system Python 3.11 and its stock pip,
#      pip install ./runtime[tflite,test] from PyPI, the runtime's tests against the installed copy,
#      simpleunet-infer on the bundled sample (ONNX int8 and TFLite int8), simpleunet-bench --device cpu --runs 3,
#      then ./runtime[video] (OpenCV headless) on top and the video and CLI tests again;
#   3. the same simpleunet-infer on this x86 machine, then per-image Dice of arm64 vs x86 masks (>= 0.99 or fail);
#   4. prints each phase's run time, the wheels' download sizes and the installed venv's size.
#
# Emulated run times say nothing about a real Pi's speed; this proves correctness and footprint.
# Usage: sudo bash benchmarks/arm64/run.sh [--rebuild] [--keep]      (or: sudo make arm64)
#   --rebuild  rebuild the cached userland        --keep  keep the work folder (rootfs with the venv) to inspect
# Env: SIMPLEUNET_CACHE (default ~/.cache/simpleunet; the userland and pip's cache go to its arm64/ folder),
#      ARM64_MIRROR (default http://deb.debian.org/debian), ARM64_MODEL (default simpleunet16-kvasir),
#      ARM64_DICE_MIN (default 0.99), X86_VENV (default .venv; without simpleunet-infer a slim venv is made),
#      ARM64_CPU: the emulated core, cortex-a72 (default: Raspberry Pi 4) or cortex-a76 (Raspberry Pi 5).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SUITE=bookworm
MIRROR="${ARM64_MIRROR:-http://deb.debian.org/debian}"
MODEL="${ARM64_MODEL:-simpleunet16-kvasir}"
DICE_MIN="${ARM64_DICE_MIN:-0.99}"
X86_VENV="${X86_VENV:-$ROOT/.venv}"
CPU="${ARM64_CPU:-cortex-a72}"
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
REBUILD=0; KEEP=0
for a in "$@"; do
    case "$a" in
        --rebuild) REBUILD=1 ;; --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $a (use --rebuild, --keep)" >&2; exit 2 ;;
    esac
done

die() { echo "arm64: ERROR: $*" >&2; exit 1; }
say() { echo "arm64: $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
PHASES=()                                      # "seconds<TAB>name", in order
phase_done() { PHASES+=("$(secs "$1")	$2"); say "$2: $(secs "$1") s"; }
T0=$(now)

case "$CPU" in   # MIDR fields of /proc/cpuinfo: implementer variant part revision (BCM2711 r0p3, BCM2712 r4p1)
    cortex-a72) MIDR=(0x41 0x0 0xd08 3); PI="Raspberry Pi 4" ;;
    cortex-a76) MIDR=(0x41 0x4 0xd0b 1); PI="Raspberry Pi 5" ;;
    *) echo "run.sh: ARM64_CPU must be cortex-a72 (Pi 4) or cortex-a76 (Pi 5), not $CPU" >&2; exit 2 ;;
esac

# ---- preflight ------------------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mounts need it): sudo make arm64"
CACHE="$(realpath -m "${SIMPLEUNET_CACHE:-$HOME/.cache/simpleunet}")/arm64"
case "$CACHE/" in
    "$ROOT"/*|"$(realpath -m "$ROOT/../shared")"/*) die "cache $CACHE is inside the repo or ../shared; set SIMPLEUNET_CACHE" ;;
esac
mkdir -p "$CACHE/pip"
if command -v zstd >/dev/null; then TAR_Z=--zstd; EXT=tar.zst; else TAR_Z=--gzip; EXT=tar.gz; fi
KEY="$(printf '%s %s %s' "$SUITE" "$PACKAGES" minbase | sha256sum | cut -c1-8)"
TARBALL="$CACHE/$SUITE-arm64-$KEY.$EXT"
[ "$REBUILD" = 1 ] && rm -f "$TARBALL"

t=$(now)
HOST_ARCH="$(uname -m)"
need=()
[ -f "$TARBALL" ] || command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "$HOST_ARCH" != aarch64 ]; then
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
fi
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} with apt-get"
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1 ||
        die "apt-get could not install ${need[*]} (no network to the Debian mirror?)"
fi

BINFMT=/proc/sys/fs/binfmt_misc
if [ "$HOST_ARCH" != aarch64 ]; then
    if [ ! -e "$BINFMT/register" ]; then
        mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null ||
            die "no binfmt: cannot mount binfmt_misc on $BINFMT (kernel without binfmt_misc, or no CAP_SYS_ADMIN)"
    fi
    if ! grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if ! grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null; then   # no binfmt-support entry: register by hand
        printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$(command -v qemu-aarch64-static)"':F' \
            >"$BINFMT/register" 2>/dev/null || true
    fi
    grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null ||
        die "no binfmt: the qemu-aarch64 handler is not registered (update-binfmts --enable qemu-aarch64 failed)"
    QEMU_INTERP="$(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64")"
    QEMU_FIXED=0; grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" && QEMU_FIXED=1
fi

curl -fsS -m 20 -o /dev/null https://pypi.org/simple/pip/ 2>/dev/null || die "no network: cannot reach https://pypi.org"
if [ ! -f "$TARBALL" ]; then
    curl -fsS -m 20 -o /dev/null "$MIRROR/dists/$SUITE/Release" 2>/dev/null || die "no network: cannot reach $MIRROR"
fi
phase_done "$t" "preflight (tools, binfmt, network)"

# ---- mounts and cleanup ---------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/simpleunet-arm64.XXXXXX")"
BUILD=""
mounts_under() { awk -v p="$1/" 'index($5 "/", p) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }
unmount_under() {
    local m
    for m in $(mounts_under "$1"); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}
remove_tree() {   # only once nothing is mounted below it, and never across file systems
    [ -n "$1" ] && [ -e "$1" ] || return 0
    unmount_under "$1"
    if [ -n "$(mounts_under "$1")" ]; then
        echo "arm64: WARNING: still mounted under $1, not removing it: $(mounts_under "$1" | tr '\n' ' ')" >&2
        return 0
    fi
    rm -rf --one-file-system "$1"
}
cleanup() {
    local rc=$?
    # unshare --fork ignores SIGTERM/SIGINT; SIGKILL makes its --kill-child take the whole namespace down
    if [ -n "$CHILD" ]; then kill -KILL "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
    [ -n "$BUILD" ] && remove_tree "$BUILD"
    if [ "$KEEP" = 1 ] && [ -d "$WORK" ]; then unmount_under "$WORK"; say "kept $WORK"; else remove_tree "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command chrooted in $1 inside a private mount namespace: /proc, /sys, /dev and pip's cache are mounted
# there only, never propagate to this machine's mounts, and vanish with the namespace even if the script is killed
# (the EXIT trap also unmounts and checks anything left under the work folder before removing it).
# Also in its own PID namespace, run in the background and waited for, so that Ctrl-C / kill stops it at once: the
# EXIT trap kills unshare, whose --kill-child takes the namespace's init, and so every process in it, down.
CHILD=""
in_chroot() {
    local r="$1" rc=0; shift
    QEMU_CPU="$CPU" unshare --mount --propagation private --pid --fork --kill-child -- /bin/bash -euc '
        r="$1"; pip_cache="$2"; cpuinfo="$3"; shift 3
        mount -t proc proc "$r/proc"; mount -t sysfs sysfs "$r/sys"; mount --rbind /dev "$r/dev"
        if [ -f "$cpuinfo" ]; then mount --bind "$cpuinfo" "$r/proc/cpuinfo"; fi
        mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
        mkdir -p "$r/root/.cache/pip"; mount --bind "$pip_cache" "$r/root/.cache/pip"
        exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb PIP_ROOT_USER_ACTION=ignore \
            QEMU_CPU="$QEMU_CPU" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' _ "$r" "$CACHE/pip" "$WORK/cpuinfo" "$@" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return $rc
}

qemu_into() {  # without the binfmt F flag the interpreter must exist inside the chroot
    if [ "$HOST_ARCH" != aarch64 ] && [ "$QEMU_FIXED" = 0 ]; then
        mkdir -p "$1$(dirname "$QEMU_INTERP")" && cp -L "$QEMU_INTERP" "$1$QEMU_INTERP"
    fi
}

# ---- the userland: debootstrap once, cached as a tarball ------------------------------------------------------
t=$(now)
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$TARBALL" ]; then
    how="cached $(basename "$TARBALL")"
else
    BUILD="$(mktemp -d "$CACHE/.build.XXXXXX")"
    say "building the $SUITE arm64 userland with debootstrap (first run only; emulated second stage: minutes)"
    mkdir -p "$BUILD/rootfs"; qemu_into "$BUILD/rootfs"
    unshare --mount --propagation private --pid --fork --kill-child -- debootstrap --arch=arm64 --variant=minbase \
        --include="$PACKAGES" "$SUITE" "$BUILD/rootfs" "$MIRROR" >"$BUILD/debootstrap.log" 2>&1 &
    CHILD=$!; rc=0; wait "$CHILD" || rc=$?; CHILD=""
    [ $rc = 0 ] ||
        { tail -5 "$BUILD/debootstrap.log" >&2; die "debootstrap --arch=arm64 $SUITE failed (log above)"; }
    unmount_under "$BUILD/rootfs"
    in_chroot "$BUILD/rootfs" /usr/bin/apt-get clean
    rm -rf "$BUILD/rootfs"/var/lib/apt/lists/* "$BUILD/rootfs"/var/cache/apt/*.bin
    [ "$HOST_ARCH" != aarch64 ] && [ "$QEMU_FIXED" = 0 ] && rm -f "$BUILD/rootfs$QEMU_INTERP"
    tar -C "$BUILD/rootfs" --numeric-owner $TAR_Z -cpf "$BUILD/rootfs.$EXT" .
    mv "$BUILD/rootfs.$EXT" "$TARBALL"
    remove_tree "$BUILD"; BUILD=""
    how="built with debootstrap"
fi
flock -u 9
R="$WORK/rootfs"
mkdir -p "$R"
tar -C "$R" --numeric-owner $TAR_Z -xpf "$TARBALL"
qemu_into "$R"
in_chroot "$R" /bin/true 2>/dev/null || die "no binfmt: cannot run aarch64 binaries in the chroot (qemu-aarch64 handler)"
# qemu 7.2 (bookworm's) shows the guest this machine's x86 /proc/cpuinfo, on which onnxruntime's cpuinfo library
# segfaults (qemu >= 8.2 emulates an ARM one). So the guest gets what a Pi's kernel would print for the emulated
# core: the MIDR of $CPU and, as Features, the HWCAP bits qemu actually gives the guest.
if [ "$HOST_ARCH" != aarch64 ]; then
    cat >"$R/tmp/hwcap.py" <<'PY'
import ctypes
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
H1 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 "
      "sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
H2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm "
      "bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 sme_f16f32 sme_b16f32 "
      "sme_f32f32 sme_fa64").split()
h1, h2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
print(" ".join([n for i, n in enumerate(H1) if h1 >> i & 1] + [n for i, n in enumerate(H2) if h2 >> i & 1]))
PY
    FEATURES="$(in_chroot "$R" /usr/bin/python3 /tmp/hwcap.py)" || die "cannot run python3 in the arm64 chroot"
    ncpu="$(nproc --all)"
    if [ -r /sys/devices/system/cpu/possible ]; then
        ncpu=$(( $(awk -F'[-,]' '{ print $NF }' /sys/devices/system/cpu/possible) + 1 ))
    fi
    for ((i = 0; i < ncpu; i++)); do   # one entry per possible CPU, as the guest's sysfs (this machine's) lists
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\n' \
            "$i" "$FEATURES" "${MIDR[0]}"
        printf 'CPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "${MIDR[1]}" "${MIDR[2]}" "${MIDR[3]}"
    done >"$WORK/cpuinfo"
    printf 'Hardware\t: QEMU %s, emulated (%s core)\n' "$CPU" "$PI" >>"$WORK/cpuinfo"
    say "emulated CPU: $CPU ($PI core), features: $FEATURES"
fi
say "userland: $how ($(du -h "$TARBALL" | cut -f1) tarball, $(du -sh "$R" | cut -f1) unpacked)"
phase_done "$t" "userland ($how)"

# ---- a snapshot of runtime/ (both sides segment with the same model files) ------------------------------------
mkdir -p "$R/src" "$R/out"
tar -C "$ROOT" --exclude=runtime/build --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
    -cf - runtime | tar -C "$R/src" -xf -
SNAP="$R/src/runtime"
# This machine's view of the network, as the host sees it: its resolver, and its CA bundle (a TLS-intercepting
# proxy's CA, where there is one). Nothing else of the host enters the userland.
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cp -L /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"; fi

# ---- inside the chroot: what a Raspberry Pi OS user runs ------------------------------------------------------
cat >"$R/src/inner.sh" <<'INNER'
set -euo pipefail
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
phase() { echo "$(secs "$1")	$2" >>/out/phases.tsv; echo "arm64[chroot]: $2: $(secs "$1") s"; }
V=/opt/simpleunet; RT=/src/runtime; E=/tmp/empty; mkdir -p "$E"
echo "arm64[chroot]: $(uname -m), Debian $(cat /etc/debian_version), $(python3 -V), $(ldd --version | head -1 | sed 's/.* //;s/^/glibc /')"

t=$(now)
python3 -m venv "$V"
echo "arm64[chroot]: $("$V/bin/pip" --version | cut -d' ' -f1-2) (the stock bookworm pip, not upgraded)"
"$V/bin/pip" install -q --report /out/pip-report.json "$RT[tflite,test]"
phase "$t" "venv + pip install ./runtime[tflite,test] (emulated)"
"$V/bin/pip" list --format=freeze >/out/freeze.txt
echo "arm64[chroot]: $(grep -iE '^(numpy|onnxruntime|ai-edge-litert|ai_edge_litert|pillow|simpleunet-runtime)=' /out/freeze.txt | tr '\n' ' ')"
for mod in torch tensorflow onnx onnx2tf tf_keras; do
    if "$V/bin/python" -c "import $mod" 2>/dev/null; then echo "FAIL: '$mod' is importable" >&2; exit 1; fi
done
LOC="$(cd "$E" && "$V/bin/python" -c 'import simpleunet_runtime as r; print(r.__file__)')"
case "$LOC" in "$V"/*) ;; *) echo "FAIL: simpleunet_runtime imported from $LOC, not the venv" >&2; exit 1;; esac

t=$(now)
# Under emulation one test cannot pass: it asserts the measured fp32 peak is above 0.1 GFLOP/s (qemu: ~0.06).
SKIP=(); if [ "$EMULATED" = 1 ]; then SKIP=(-k "not test_fp32_peak_is_measured"); fi
if ! (cd "$E" && "$V/bin/python" -m pytest -q -rs -p no:cacheprovider --rootdir "$RT/tests" -c /dev/null \
        "${SKIP[@]}" "$RT/tests") >/out/pytest.txt 2>&1; then
    tail -40 /out/pytest.txt; echo "FAIL: the runtime's tests" >&2; exit 1
fi
grep -E '^SKIPPED' /out/pytest.txt || true
tail -1 /out/pytest.txt
[ ${#SKIP[@]} = 0 ] || echo "arm64[chroot]: deselected under emulation: test_bench.py::test_fp32_peak_is_measured (a speed floor)"
phase "$t" "runtime tests (emulated)"

SAMPLE="$("$V/bin/python" -c 'from simpleunet_runtime.sample import sample_dir; print(sample_dir() / "images")')"
(cd "$E" && "$V/bin/simpleunet-models") | tee /out/models.txt
if grep -q "^$MODEL " /out/models.txt; then
    ONNX=(--model "$MODEL" --precision int8); TFL=(--model "$MODEL" --precision int8 --backend tflite)
    BENCH=()
    "$V/bin/python" -c "from simpleunet_runtime import bundled
for f in ('onnx', 'tflite'): p = bundled.resolve('$MODEL', 'int8', f); print(f'arm64[chroot]: {p.name} sha256 {bundled.sha256(p)[:16]}')"
else
    echo "arm64[chroot]: no bundled $MODEL; segmenting with the test fixture models"
    ONNX=(--model "$RT/tests/fixtures/tiny_int8.onnx"); TFL=(--model "$RT/tests/fixtures/tiny_int8.tflite")
    BENCH=(--models "$RT/tests/fixtures/tiny_int8.onnx" "$RT/tests/fixtures/tiny_int8.tflite")
fi
printf '%q ' "${ONNX[@]}" >/out/args-onnx; printf '%q ' "${TFL[@]}" >/out/args-tflite
for kind in onnx tflite; do
    if [ $kind = onnx ]; then A=("${ONNX[@]}"); else A=("${TFL[@]}"); fi
    t=$(now)
    (cd "$E" && "$V/bin/simpleunet-infer" "$SAMPLE" "${A[@]}" --out "/out/masks-$kind" -q)
    n=$(find "/out/masks-$kind" -name '*.png' | wc -l)
    [ "$n" -eq "$(find "$SAMPLE" -name '*.jpg' | wc -l)" ] || { echo "FAIL: $n $kind masks written" >&2; exit 1; }
    phase "$t" "simpleunet-infer $kind int8, $n images (emulated)"
done

t=$(now)
if ! (cd "$E" && "$V/bin/simpleunet-bench" --device cpu --runs 3 "${BENCH[@]}" --markdown /out/bench.md) \
        >/out/bench.txt 2>&1; then
    tail -20 /out/bench.txt; echo "FAIL: simpleunet-bench" >&2; exit 1
fi
cat /out/bench.txt
phase "$t" "simpleunet-bench --device cpu --runs 3 (emulated)"

echo "arm64[chroot]: venv installed size $(du -sh "$V" | cut -f1); largest packages:"
du -sk "$V"/lib/python3*/site-packages/* | sort -rn | head -8 |
    awk '{ n = split($2, p, "/"); printf "  %7.1f MB  %s\n", $1 / 1024, p[n] }' | tee /out/largest.txt
du -sk "$V" | cut -f1 >/out/venv-kb
# What `pip install ./runtime[tflite]` alone puts in a venv: the dependency closure without the test extra.
"$V/bin/python" - <<'PY' | tee /out/runtime-only.txt
from importlib import metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn

def closure(name, extras=()):
    seen, todo = set(), [(name, tuple(extras))]
    while todo:
        n, ex = todo.pop()
        if cn(n) in seen:
            continue
        seen.add(cn(n))
        for r in map(Requirement, md.distribution(n).requires or []):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (*ex, "")):
                todo.append((r.name, tuple(r.extras)))
    return seen

def installed(n):
    return sum((f.locate().stat().st_size for f in md.distribution(n).files or [] if f.locate().is_file()), 0)

rt = closure("simpleunet-runtime", ["tflite"])
base = {cn(d.metadata["Name"]) for d in md.distributions()} - closure("simpleunet-runtime", ["tflite", "test"])
print(f"arm64[chroot]: ./runtime[tflite] alone: {len(rt)} distributions, {sum(map(installed, rt)) / 2**20:.0f} MB "
      f"installed (+ {sum(map(installed, base)) / 2**20:.0f} MB for the venv's own {', '.join(sorted(base))})")
print("RUNTIME_ONLY " + " ".join(sorted(rt)))
PY

# The video extra on top, after the footprint above is taken: the stream tests, which skipped above, now run.
t=$(now)
"$V/bin/pip" install -q "$RT[video]"
echo "arm64[chroot]: $("$V/bin/pip" list --format=freeze | grep -iE '^opencv-python-headless=')"
if ! (cd "$E" && "$V/bin/python" -m pytest -q -rs -p no:cacheprovider --rootdir "$RT/tests" -c /dev/null \
        "$RT/tests/test_video.py" "$RT/tests/test_runtime_cli.py") >/out/pytest-video.txt 2>&1; then
    tail -40 /out/pytest-video.txt; echo "FAIL: the runtime's video tests" >&2; exit 1
fi
grep -E '^SKIPPED' /out/pytest-video.txt || true
tail -1 /out/pytest-video.txt
phase "$t" "pip install ./runtime[video] + video and CLI tests (emulated)"
INNER
say "running the Raspberry-Pi-OS-like session in the chroot (qemu-user emulation: slow)"
: >"$R/out/phases.tsv"
EMULATED=1; [ "$HOST_ARCH" != aarch64 ] || EMULATED=0
in_chroot "$R" MODEL="$MODEL" EMULATED="$EMULATED" /bin/bash /src/inner.sh ||
    die "the arm64 session failed (output above)"
while IFS= read -r line; do PHASES+=("$line"); done <"$R/out/phases.tsv"

# ---- wheel download sizes (from PyPI, as resolved inside the chroot) ------------------------------------------
python3 - "$R/out/pip-report.json" >"$WORK/wheels.tsv" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    url = item["download_info"]["url"]
    if url.endswith(".whl"):
        print(f'{item["metadata"]["name"]}\t{item["metadata"]["version"]}\t{url}')
PY
say "wheels pip resolved for aarch64 (download sizes on PyPI):"
while IFS=$'\t' read -r name version url; do
    size="$(curl -fsSIL -m 20 "$url" | tr -d '\r' | awk 'tolower($1) == "content-length:" { n = $2 } END { print n + 0 }')"
    printf '  %8.2f MB  %s\n' "$(awk -v b="$size" 'BEGIN { print b / 1e6 }')" "$(basename "$url")"
done < <(sort "$WORK/wheels.tsv") | sort -rn | tee "$WORK/wheel-sizes.txt"
total="$(awk '{ s += $1 } END { printf "%.1f", s }' "$WORK/wheel-sizes.txt")"
ONLY="$(sed -n 's/^RUNTIME_ONLY //p' "$R/out/runtime-only.txt")"
rt_total="$(awk -v only=" $ONLY " '{ n = $3; sub(/-.*/, "", n); gsub(/[._]/, "-", n)
    if (index(only, " " tolower(n) " ")) { s += $1; c++ } } END { printf "%d files, %.1f MB", c, s }' \
    "$WORK/wheel-sizes.txt")"
say "wheels: $(wc -l <"$WORK/wheel-sizes.txt") files, $total MB to download ([tflite,test]); ./runtime[tflite] alone: $rt_total"

# ---- the same segmentation on x86, and the mask agreement -----------------------------------------------------
t=$(now)
if [ -x "$X86_VENV/bin/simpleunet-infer" ] && "$X86_VENV/bin/python" -c 'import ai_edge_litert' 2>/dev/null; then
    XV="$X86_VENV"
else
    XV="$WORK/x86-venv"
    say "no simpleunet-infer with LiteRT in $X86_VENV: making a slim x86 venv"
    python3 -m venv "$XV" && "$XV/bin/pip" install -q "$SNAP[tflite]" >/dev/null || die "x86 slim venv install failed"
fi
mkdir -p "$WORK/x86" "$WORK/empty"
X86_SAMPLE="$SNAP/simpleunet_runtime/sample/images"
for kind in onnx tflite; do
    eval "A=($(sed "s|/src/runtime|$SNAP|g" "$R/out/args-$kind"))"
    (cd "$WORK/empty" && SIMPLEUNET_MODELS_DIR="$SNAP/simpleunet_runtime/models" \
        "$XV/bin/simpleunet-infer" "$X86_SAMPLE" "${A[@]}" --out "$WORK/x86/masks-$kind" -q) >/dev/null ||
        die "x86 simpleunet-infer ($kind) failed"
done
phase_done "$t" "x86 simpleunet-infer onnx + tflite ($(basename "$XV"))"

"$XV/bin/python" - "$R/out" "$WORK/x86" "$DICE_MIN" <<'PY' | tee "$WORK/dice.txt"
import sys
from pathlib import Path
import numpy as np
from PIL import Image

arm, x86, floor = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
bad = False
for kind in ("onnx", "tflite"):
    ref = sorted((x86 / f"masks-{kind}").glob("*.png"))
    dice, same = [], 0
    for r in ref:
        a_path = arm / f"masks-{kind}" / r.name
        if not a_path.is_file():
            print(f"arm64: FAIL {kind}: no arm64 mask {r.name}"); bad = True; continue
        a, b = np.asarray(Image.open(a_path).convert("L")) > 127, np.asarray(Image.open(r).convert("L")) > 127
        if a.shape != b.shape:
            print(f"arm64: FAIL {kind}: {r.name} shape {a.shape} != {b.shape}"); bad = True; continue
        den = int(a.sum()) + int(b.sum())
        dice.append(1.0 if den == 0 else 2 * int((a & b).sum()) / den)
        same += bool((a == b).all())
    if not ref or not dice:
        print(f"arm64: FAIL {kind}: no masks to compare"); bad = True; continue
    worst = ref[int(np.argmin(dice))].name
    ok = min(dice) >= floor
    bad |= not ok
    print(f"arm64: mask agreement {kind} int8, arm64 vs x86: {len(dice)} images, Dice mean {np.mean(dice):.5f} "
          f"min {min(dice):.5f} ({worst}), {same}/{len(dice)} pixel-identical  {'OK' if ok else f'FAIL (< {floor})'}")
sys.exit(1 if bad else 0)
PY
[ "${PIPESTATUS[0]}" = 0 ] || die "arm64 masks disagree with x86 (Dice below $DICE_MIN)"

# ---- summary ---------------------------------------------------------------------------------------------------
PHASES+=("$(secs "$T0")	total")
echo
say "summary ($CPU emulated, $(basename "$TARBALL"), runtime/ of the working tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
printf '%s\n' "${PHASES[@]}" | awk -F'\t' '{ printf "  %8.1f s  %s\n", $1, $2 }'
echo "  [tflite,test]: $(wc -l <"$WORK/wheel-sizes.txt") wheels, $total MB download," \
     "$(awk '{ printf "%.0f MB", $1 / 1024 }' "$R/out/venv-kb") venv installed"
echo "  [tflite] alone: $rt_total download, $(sed -n 's/.*alone: [0-9]* distributions, //p' "$R/out/runtime-only.txt")"
echo "  arm64 versions: $(grep -iE '^(numpy|onnxruntime|ai-edge-litert|ai_edge_litert|pillow)=' "$R/out/freeze.txt" | tr '\n' ' ')"
echo "  x86 versions:   $("$XV/bin/python" -m pip list --format=freeze 2>/dev/null |
    grep -iE '^(numpy|onnxruntime|ai-edge-litert|ai_edge_litert|pillow)=' | tr '\n' ' ')($XV)"
sed 's/^arm64: /  /' "$WORK/dice.txt"
say "OK"
