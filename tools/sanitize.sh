#!/bin/sh
# `make sanitize`: the C accelerators built with AddressSanitizer and UndefinedBehaviorSanitizer,
# and the unit tests that drive them run against that build. Works on a copy of the tree in
# build/sanitize so the installed (optimised) build is untouched.
set -eu
PY=${PY:-.venv/bin/python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK="$ROOT/build/sanitize"
rm -rf "$WORK"
mkdir -p "$WORK"
cp -r "$ROOT/proxy" "$ROOT/tests" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/"
rm -f "$WORK"/proxy/*.so
cd "$WORK"
CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1" \
    "$PY" setup.py -q build_ext --inplace 2>&1 | grep -v -i "beta\|warnings.warn" || true
for so in proxy/_speedups proxy/_inflight; do
    ls $so.*.so >/dev/null 2>&1 || { echo "sanitize: $so did not build" >&2; exit 1; }
done
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
# PYTHONMALLOC=malloc: every Python object on the sanitized heap; leaks are CPython's own at exit.
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONMALLOC=malloc \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$PY" -c 'import proxy, proxy._speedups, sys; assert proxy.__file__.startswith(sys.argv[1]), proxy.__file__' "$WORK"
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONMALLOC=malloc \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_resp.py tests/unit/test_hashing.py \
    tests/unit/test_inflight_fanout.py tests/unit/test_ring_route.py tests/unit/test_framer_fuzz.py tests/unit/test_inline_split.py \
    tests/unit/test_backend_fifo.py
