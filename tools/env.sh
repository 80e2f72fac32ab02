#!/usr/bin/env bash
# Run a command inside greenmim_mm's environment, creating the environment first if needed.
#
#   tools/env.sh python -m pytest tests      tools/env.sh mim train greenmim_mm CONFIG
#
# The virtual environment lives outside the clone, in
#   ${GREENMIM_MM_HOME:-~/.cache/greenmim_mm}/envs/<hash of requirements/*.txt>
# so every clone on the machine (CI's fresh clones included) reuses it. mmcv 2.1.0 is compiled
# from its sdist with ops once and the wheel is cached in
#   .../wheels/<python tag>-torch<version>-cuda<version>/
# so a torch change never reuses a wheel built against another torch.
# The project itself is installed in develop mode pointing at the calling clone (re-pointed when
# another clone calls), so `mim train greenmim_mm ...` always runs the current code.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${GREENMIM_MM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/greenmim_mm}"
PYTHON="${GREENMIM_MM_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
REQ="$REPO/requirements"
HASH="$(cat "$REQ"/build.txt "$REQ"/torch.txt "$REQ"/runtime.txt "$REQ"/mim.txt "$REQ"/tests.txt \
        | sha256sum | cut -c1-16)"
ENV="$HOME_DIR/envs/$HASH"
log() { echo "[env.sh] $*" >&2; }

pip_in() { "$ENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

build_mmcv_wheel() {
  # $1: wheel cache dir. Compiles mmcv's CPU (and, where nvcc + a GPU exist, CUDA) ops.
  local cache="$1" tmp
  tmp="$(mktemp -d)"
  log "building mmcv 2.1.0 with ops from its sdist (20-35 min on 2 cores) -> $cache"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$ENV/bin/python" -m pip wheel -q \
    --disable-pip-version-check --no-build-isolation --no-deps --no-binary mmcv \
    -w "$tmp" "$(grep -E '^mmcv==' "$REQ/runtime.txt")"
  mkdir -p "$cache"
  mv "$tmp"/mmcv-*.whl "$cache"/
  rmdir "$tmp" 2>/dev/null || true
}

create_env() {
  local t0=$SECONDS tag cache
  log "creating environment $ENV"
  rm -rf "$ENV"
  "$PYTHON" -m venv "$ENV"
  pip_in -r "$REQ/build.txt"
  pip_in -r "$REQ/torch.txt" "$(grep -E '^numpy==' "$REQ/runtime.txt")"
  tag="$("$ENV/bin/python" -c 'import sys, torch; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-cuda{torch.version.cuda}")')"
  cache="$HOME_DIR/wheels/$tag"
  ls "$cache"/mmcv-*.whl >/dev/null 2>&1 || build_mmcv_wheel "$cache"
  # Torch and the build tools are fixed; the constraints stop any package from moving them.
  cat "$REQ/build.txt" "$REQ/torch.txt" > "$ENV/constraints.txt"
  pip_in -c "$ENV/constraints.txt" "$cache"/mmcv-*.whl -r <(grep -vE '^mmcv==' "$REQ/runtime.txt") \
    -r "$REQ/tests.txt"
  pip_in -c "$ENV/constraints.txt" --no-deps "$(grep -E '^openmim==' "$REQ/mim.txt")"
  pip_in -c "$ENV/constraints.txt" $(grep -vE '^(#|openmim==|$)' "$REQ/mim.txt")
  touch "$ENV/.complete"
  log "environment ready in $((SECONDS - t0)) s"
}

install_project() {
  # Develop mode (an egg-link to this clone): PEP 660 editable installs break mim's package lookup.
  local marker="$ENV/.project_path" old site
  old="$(cat "$marker" 2>/dev/null || true)"
  if [ "$old" != "$REPO" ] || [ ! -e "$REPO/greenmim_mm.egg-info" ]; then
    log "installing greenmim_mm from $REPO (develop mode)"
    # Forget the clone installed before (its path would shadow this one on sys.path).
    site="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    rm -f "$site/greenmim-mm.egg-link"
    if [ -n "$old" ] && [ -f "$site/easy-install.pth" ]; then
      grep -vxF "$old" "$site/easy-install.pth" > "$site/easy-install.pth.new" || true
      mv "$site/easy-install.pth.new" "$site/easy-install.pth"
    fi
    (cd "$REPO" && "$ENV/bin/python" setup.py -q develop --no-deps >/dev/null 2>"$ENV/develop.log") \
      || { cat "$ENV/develop.log" >&2; exit 1; }
    echo "$REPO" > "$marker"
  fi
}

mkdir -p "$HOME_DIR/envs"
exec 9>"$HOME_DIR/envs/.lock"
flock 9
[ -f "$ENV/.complete" ] || create_env
install_project
flock -u 9

export PATH="$ENV/bin:$PATH" VIRTUAL_ENV="$ENV"
export PYTHONNOUSERSITE=1
[ $# -gt 0 ] || { echo "$ENV"; exit 0; }
exec "$@"
