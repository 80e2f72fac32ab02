#!/usr/bin/env bash
# Run a command inside greenmim_mm's environment, creating the environment first if needed.
#
#   tools/env.sh python -m pytest tests      tools/env.sh mim train greenmim_mm CONFIG
#
# Two layers:
# * The shared virtual environment holds third-party packages only. It lives outside the clone, in
#     ${GREENMIM_MM_HOME:-~/.cache/greenmim_mm}/envs/<hash of requirements/*.txt>
#   so every clone on the machine (CI's fresh clones included) reuses it. mmcv 2.1.0 is compiled
#   from its sdist with ops once and the wheel is cached in
#     .../wheels/<python tag>-torch<version>-cuda<version>/
#   so a torch change never reuses a wheel built against another torch. Once complete it is only
#   read: a read-only prebuilt environment works without its lock file.
# * The project is a per-clone layer: this clone goes first on PYTHONPATH (inherited by every
#   child process: torchrun workers, mim, subprocesses of the tests) together with its own
#   egg-info, so `mim train greenmim_mm ...` finds the package and its `.mim` configs, and two
#   clones running at once each import their own code. Nothing of a clone is installed into the
#   shared environment.
# * Optional extras: GREENMIM_MM_EXTRAS=detectron2 (comma-separated list) selects a separate
#   environment, the default one plus the extra, keyed by the default files plus the extra's
#   (requirements/detectron2.txt and tools/extras/detectron2/*). Unset, the hash and the
#   environment are exactly the default ones.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${GREENMIM_MM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/greenmim_mm}"
PYTHON="${GREENMIM_MM_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
REQ="$REPO/requirements"
EXTRAS="$(echo "${GREENMIM_MM_EXTRAS:-}" | tr ', ' '\n\n' | sed '/^$/d' | sort -u | tr '\n' ' ')"
HASH_FILES=("$REQ"/build.txt "$REQ"/torch.txt "$REQ"/runtime.txt "$REQ"/mim.txt "$REQ"/tests.txt)
for extra in $EXTRAS; do
  case "$extra" in
    detectron2) HASH_FILES+=("$REQ"/detectron2.txt "$REPO"/tools/extras/detectron2/_C.py
                             "$REPO"/tools/extras/detectron2/prepare_sdist.py) ;;
    *) echo "[env.sh] error: unknown extra '$extra' in GREENMIM_MM_EXTRAS (known: detectron2)" >&2
       exit 1 ;;
  esac
done
HASH="$(cat "${HASH_FILES[@]}" | sha256sum | cut -c1-16)"
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
  for extra in $EXTRAS; do "install_$extra"; done
  touch "$ENV/.complete"
  log "environment ready in $((SECONDS - t0)) s"
}

install_detectron2() {
  # detectron2 v0.5 from the registry's sdist (pinned by hash), prepared for a pure-Python build
  # by tools/extras/detectron2/prepare_sdist.py; every package of the default environment keeps
  # its version (constraints from its freeze). Checked to import before the environment counts
  # as complete: a broken detectron2 would break `import mmdet.models` (mmdet's d2_wrapper).
  local tmp t0=$SECONDS
  tmp="$(mktemp -d)"
  log "installing the detectron2 extra"
  "$ENV/bin/python" -m pip list --disable-pip-version-check --format=freeze > "$ENV/constraints-default.txt"
  pip_in -c "$ENV/constraints-default.txt" -r <(grep -vE '^(#|detectron2-cdo==|$)' "$REQ/detectron2.txt")
  grep -E '^detectron2-cdo==' "$REQ/detectron2.txt" > "$tmp/sdist.txt"
  "$ENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    --no-build-isolation --require-hashes -r "$tmp/sdist.txt" -d "$tmp"
  "$ENV/bin/python" "$REPO/tools/extras/detectron2/prepare_sdist.py" "$tmp"/detectron2_cdo-*.tar.gz "$tmp/src" >/dev/null
  pip_in -c "$ENV/constraints-default.txt" --no-deps --no-build-isolation "$tmp"/src/detectron2_cdo-*
  rm -rf "$tmp"
  "$ENV/bin/python" -c 'import detectron2.layers, detectron2.data.transforms, mmdet.models
from detectron2 import model_zoo; model_zoo.get_config_file("Base-RCNN-FPN.yaml")'
  log "detectron2 extra installed in $((SECONDS - t0)) s"
}

drop_old_develop_install() {
  # Environments made before the per-clone layer held a develop install of one clone (an egg-link
  # and an easy-install.pth line); remove it so the shared environment holds third-party code only.
  local site old
  site="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  [ -e "$site/greenmim-mm.egg-link" ] || [ -e "$ENV/.project_path" ] || return 0
  old="$(cat "$ENV/.project_path" 2>/dev/null || true)"
  log "removing the develop install of ${old:-an old clone} from the shared environment"
  rm -f "$site/greenmim-mm.egg-link" "$ENV/.project_path"
  if [ -n "$old" ] && [ -f "$site/easy-install.pth" ]; then
    grep -vxF "$old" "$site/easy-install.pth" > "$site/easy-install.pth.new" || true
    mv "$site/easy-install.pth.new" "$site/easy-install.pth"
  fi
}

needs_setup() {
  # True while the shared environment is incomplete or still carries an old develop install.
  [ -f "$ENV/.complete" ] || return 0
  [ -e "$ENV/.project_path" ]
}

clone_egg_info() {
  # The clone's own metadata (greenmim_mm.egg-info, git-ignored) for pkg_resources / mim.
  # Regenerated when setup.py or the version changes; written atomically (temp dir + rename).
  local info="$REPO/greenmim_mm.egg-info" tmp
  if [ -f "$info/PKG-INFO" ] && [ "$info/PKG-INFO" -nt "$REPO/setup.py" ] \
     && [ "$info/PKG-INFO" -nt "$REPO/greenmim_mm/version.py" ]; then
    return 0
  fi
  [ -w "$REPO" ] || { log "warning: $REPO is read-only; running without its egg-info (mim cannot find greenmim_mm)"; return 0; }
  exec 8<"$REPO"; flock 8   # one writer per clone
  tmp="$(mktemp -d "$REPO/.egg-info.XXXXXX")"
  (cd "$REPO" && "$ENV/bin/python" setup.py -q egg_info --egg-base "$tmp" >/dev/null 2>"$tmp/log") \
    || { cat "$tmp/log" >&2; rm -rf "$tmp"; exit 1; }
  rm -rf "$info"
  mv "$tmp/greenmim_mm.egg-info" "$info"
  rm -rf "$tmp"
  flock -u 8; exec 8<&-
}

if needs_setup; then
  # Creating or cleaning the shared environment needs write access (and the lock).
  if ! mkdir -p "$HOME_DIR/envs" 2>/dev/null || ! { exec 9>"$HOME_DIR/envs/.lock"; } 2>/dev/null; then
    echo "[env.sh] error: GREENMIM_MM_HOME=$HOME_DIR is not writable, and the environment" \
         "$ENV is $([ -f "$ENV/.complete" ] && echo 'not clean (old develop install)' || echo 'missing or incomplete')." \
         "Point GREENMIM_MM_HOME at a writable folder, or prebuild the environment there" \
         "(tools/env.sh true) before mounting it read-only." >&2
    exit 1
  fi
  flock 9
  [ -f "$ENV/.complete" ] || create_env
  drop_old_develop_install
  flock -u 9
  exec 9>&-
fi
clone_egg_info

export PATH="$ENV/bin:$PATH" VIRTUAL_ENV="$ENV"
export PYTHONNOUSERSITE=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ $# -gt 0 ] || { echo "$ENV"; exit 0; }
exec "$@"
