#!/usr/bin/env bash
# The one command of a GPU run on an H100/H200 (at most 600 s, with the wheel bundle .whl/ from
# tools/device/build_bundle.sh in the project root), from the project root (docs/gpu.md):
#
#   bash tools/device/run_gpu_checks.sh            # GPU: Swin-B, bf16, batch 128
#   OUT=<scratch>/o DEADLINE=300 bash tools/device/run_gpu_checks.sh --device cpu --arch nano \
#       --img 128 --batch 2 --iters 1 --warmup 0               # CPU rehearsal (tiny; a test)
#
# SECTIONS="env correct" runs only those sections (in the order of the three groups below).
# Three processes, each under its own timeout, so a hang or crash in a later part keeps what
# the earlier parts wrote. Everything lands in $OUT (<= 8 files): results.json (merged after
# every section), log.txt, install.txt, profile_sdpa.txt, profile_flex.txt.
set -u
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SITE="${GM_SITE:-$(mktemp -d)/site}"
START=$(date +%s)
{
  echo "== install $(date -u +%FT%TZ)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --target "$SITE" .whl/*.whl && echo "installed: $(ls .whl | tr '\n' ' ')"
  else
    echo "no .whl/ bundle carried: using whatever python3 has"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
} > "$OUT/install.txt" 2>&1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONNOUSERSITE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
DEADLINE="${DEADLINE:-540}"   # seconds for the whole script (a 600 s call, 60 s margin)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
run() {  # run SECONDS SECTIONS...
  local t="$1"; shift
  if [ -n "${SECTIONS:-}" ]; then  # keep only the sections asked for
    local keep=() s; for s in "$@"; do [[ " $SECTIONS " == *" $s "* ]] && keep+=("$s"); done
    [ "${#keep[@]}" -eq 0 ] && return; set -- "${keep[@]}"
  fi
  local l; l=$(left); [ "$t" -gt "$l" ] && t="$l"
  [ "$t" -lt 20 ] && { echo "skip $* (only ${l}s left)" >> "$OUT/log.txt"; return; }
  echo "== $* (timeout ${t}s, $(date -u +%T))" >> "$OUT/log.txt"
  timeout -k 10 "$t" python3 -u "$HERE/gpu_checks.py" --sections "$@" --start "$START" \
    --deadline "$DEADLINE" ${EXTRA_ARGS:-} >> "$OUT/log.txt" 2>&1
  echo "== exit $? after $(( $(date +%s) - START ))s" >> "$OUT/log.txt"
}
EXTRA_ARGS="$*"
export OUT
rm -f "$OUT/results.json"
# per-group timeouts (seconds, capped by what is left of DEADLINE); GROUP_TIMEOUTS="540 540 540"
# lets only the deadline bind (the rehearsal test, on a loaded CPU)
read -r T1 T2 T3 <<< "${GROUP_TIMEOUTS:-150 240 600}"
run "$T1" env correct sync          # 1. environment, correctness on the device, sync audit
run "$T2" bench224 profile          # 2. the speed table at 224 (sdpa first, then + flex), profile
run "$T3" bench192 flexmicro compile  # 3. 192 px, flex microbenchmark, torch.compile (guarded)
echo "total $(( $(date +%s) - START ))s" >> "$OUT/log.txt"
tail -5 "$OUT/log.txt"
