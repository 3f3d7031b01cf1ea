#!/usr/bin/env bash
# Installs MaxText and everything it needs into the current Python environment (a venv if one is active,
# else the interpreter named by $PYTHON), then the package itself in editable mode.
#
#   bash setup.sh                      # CPU (default); includes test/lint tools and the parity-test deps
#   DEVICE=gpu bash setup.sh           # + jax[cuda12] at the pinned jax version (JAX_CUDA=cuda13 for CUDA 13)
#   DEVICE=tpu bash setup.sh           # + jax[tpu] and libtpu (requirements-tpu.txt) at the pinned jax version
#
# Options (environment variables):
#   DEVICE=cpu|gpu|tpu    accelerator support to install (default cpu)
#   PYTHON=python3        interpreter to install into (default: python3 on PATH)
#   JAX_CUDA=cuda12       jax extra used for DEVICE=gpu: cuda12 (default, driver >= 525) or cuda13 (driver >= 580)
#   WITH_TEST_DEPS=1|0    also install requirements-test.txt (torch CPU + transformers, for the parity tests);
#                         default 1 for DEVICE=cpu, 0 for gpu/tpu (PyPI's torch is a multi-GB CUDA build)
#   INSTALL_PACKAGE=1|0   finish with `pip install -e .` (default 1; the Dockerfiles use 0 to cache deps)
#   FORCE=1               run pip even when every pin is already satisfied
#   LIBTPU_TARGET_DIR=DIR where libtpu (requirements-tpu.txt) is unpacked, outside the environment (so no
#                         process probes for a TPU), for MaxText.train_compile's TPU targets and their tests
#                         (PYTHONPATH=DIR); default ~/.cache/maxtext/libtpu-<version> (the tests look there)
#   CUDA_PLUGIN_TARGET_DIR=DIR  likewise for JAX's CUDA 12 plugin (jax-cuda12-plugin and -pjrt at the jax pin),
#                         which compiles train_compile's GPU targets (h100-8, ...) on a machine without a GPU;
#                         default ~/.cache/maxtext/jax-cuda12-<jax version>
#
# Versions come from requirements.txt (direct deps) and constraints.txt (the whole closure), so two runs a
# month apart install the same thing. Safe to re-run: when every pin is already installed it does nothing.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
REPO="$(pwd -P)"

DEVICE="${DEVICE:-cpu}"
PYTHON="${PYTHON:-python3}"
JAX_CUDA="${JAX_CUDA:-cuda12}"
INSTALL_PACKAGE="${INSTALL_PACKAGE:-1}"
FORCE="${FORCE:-0}"
if [[ "${DEVICE}" == "cpu" ]]; then WITH_TEST_DEPS="${WITH_TEST_DEPS:-1}"; else WITH_TEST_DEPS="${WITH_TEST_DEPS:-0}"; fi

STEP="start"
START_TIME=${SECONDS}
log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR (step: ${STEP}): $*" >&2; exit 1; }
on_error() {
  local rc=$?
  echo "[setup] FAILED at step \"${STEP}\" (exit code ${rc}). Fix the error above and re-run: bash setup.sh" >&2
}
trap on_error ERR

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore # running as root (containers, CI) is expected here
if [[ ! -t 1 ]]; then export PIP_PROGRESS_BAR=off; fi

# Runs pip, hiding its one-line-per-package "already satisfied" chatter (errors and downloads still show).
pip_install() {
  log "+ ${PYTHON} -m pip install $*"
  "${PYTHON}" -m pip install "$@" 2>&1 |
    { grep -v -e '^Requirement already satisfied' -e 'is neither a file nor a directory' || true; }
}

# ---------------------------------------------------------------------------------------------------------
STEP="check python"
command -v "${PYTHON}" >/dev/null 2>&1 || die "'${PYTHON}' not found. Install Python >= 3.11 or set PYTHON=/path/to/python3."
PY_VERSION="$("${PYTHON}" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" ||
  die "'${PYTHON}' does not run. Install Python >= 3.11 or set PYTHON=/path/to/python3."
# jax 0.10.2 (and numpy/scipy at the pinned versions) require Python >= 3.11.
"${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
  die "Python >= 3.11 is required (jax==0.10.2 needs it), but ${PYTHON} is ${PY_VERSION}. Set PYTHON=python3.11 (or newer)."
"${PYTHON}" -m pip --version >/dev/null 2>&1 ||
  die "pip is not available for ${PYTHON}. Install it (python3 -m ensurepip, or apt-get install python3-pip / python3-venv)."
ENV_DESC="$("${PYTHON}" -c 'import sys; print(sys.prefix + (" (venv)" if sys.prefix != sys.base_prefix else " (no venv)"))')"
log "python: $("${PYTHON}" -c 'import sys; print(sys.executable)') ${PY_VERSION}, env: ${ENV_DESC}"
log "$("${PYTHON}" -m pip --version)"

STEP="check options"
JAX_VERSION="$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' requirements.txt)"
[[ -n "${JAX_VERSION}" ]] || die "could not read the jax pin (jax==...) from requirements.txt"
LIBTPU_REQ="$(sed -n 's/^\(libtpu==[^[:space:]#]*\).*/\1/p' requirements-tpu.txt)"
[[ -n "${LIBTPU_REQ}" ]] || die "could not read the libtpu pin (libtpu==...) from requirements-tpu.txt"
LIBTPU_TARGET_DIR="${LIBTPU_TARGET_DIR:-${HOME}/.cache/maxtext/libtpu-${LIBTPU_REQ#libtpu==}}"
CUDA_PLUGIN_TARGET_DIR="${CUDA_PLUGIN_TARGET_DIR:-${HOME}/.cache/maxtext/jax-cuda12-${JAX_VERSION}}"
EXTRA_REQS=()
case "${DEVICE}" in
  cpu) ;;
  gpu)
    [[ "${JAX_CUDA}" == "cuda12" || "${JAX_CUDA}" == "cuda13" ]] || die "JAX_CUDA must be cuda12 or cuda13, got '${JAX_CUDA}'"
    EXTRA_REQS=("jax[${JAX_CUDA}]==${JAX_VERSION}") ;;
  tpu) EXTRA_REQS=("jax[tpu]==${JAX_VERSION}" "${LIBTPU_REQ}") ;;
  *) die "DEVICE must be cpu, gpu or tpu, got '${DEVICE}'" ;;
esac
REQ_FILES=(requirements.txt)
if [[ "${WITH_TEST_DEPS}" == "1" ]]; then REQ_FILES+=(requirements-test.txt); fi
for f in "${REQ_FILES[@]}" constraints.txt; do [[ -f "${f}" ]] || die "missing ${REPO}/${f}"; done
log "device: ${DEVICE}${EXTRA_REQS[*]:+ (adds ${EXTRA_REQS[*]})}; requirement files: ${REQ_FILES[*]} (pinned by constraints.txt)"

# ---------------------------------------------------------------------------------------------------------
# Exits 0 when every requirement in the given files (and extra specs), followed through installed metadata,
# is installed at a version that satisfies both its specifier and the pin in constraints.txt. Any doubt
# (missing package, unreadable metadata) means "not satisfied", and pip runs.
pins_satisfied() {
  # -P: do not put the current directory (the repo, with its build-time maxtext.egg-info) on sys.path.
  "${PYTHON}" -P - "$@" <<'PY'
import importlib.metadata as md
import sys

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: use pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def read(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                yield Requirement(line)


def applies(req, extras=()):
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in ("", *extras))


constraints_file, files, specs = sys.argv[1], [], []
for arg in sys.argv[2:]:
    (files if arg.endswith(".txt") else specs).append(arg)
pins = {canonicalize_name(r.name): r.specifier for r in read(constraints_file)}
stack = [r for f in files for r in read(f)] + [Requirement(s) for s in specs]
stack = [r for r in stack if applies(r)]
seen = set()
while stack:
    req = stack.pop()
    name = canonicalize_name(req.name)
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"not installed: {name}")
    for spec in (req.specifier, pins.get(name)):
        if spec is not None and not spec.contains(version, prereleases=True):
            sys.exit(f"{name}=={version} does not satisfy {spec}")
    key = (name, frozenset(req.extras))
    if key in seen:
        continue
    seen.add(key)
    stack.extend(d for d in map(Requirement, md.requires(name) or []) if applies(d, req.extras))
PY
}

# Exits 0 when the maxtext distribution is installed editable from this checkout.
package_installed_here() {
  "${PYTHON}" -P - "${REPO}" <<'PY'
import importlib.metadata as md
import json
import os
import sys

try:
    info = json.loads(md.distribution("maxtext").read_text("direct_url.json") or "{}")
except (md.PackageNotFoundError, ValueError):
    sys.exit(1)
url, editable = info.get("url", ""), info.get("dir_info", {}).get("editable", False)
ok = editable and url.startswith("file://") and os.path.realpath(url[len("file://"):]) == sys.argv[1]
sys.exit(0 if ok else 1)
PY
}

# ---------------------------------------------------------------------------------------------------------
STEP="install dependencies"
CHANGED=0
if [[ "${FORCE}" != "1" ]] && why="$(pins_satisfied constraints.txt "${REQ_FILES[@]}" "${EXTRA_REQS[@]}" 2>&1)"; then
  log "dependencies: every pin already installed, skipping pip"
else
  [[ "${FORCE}" == "1" ]] || log "dependencies: ${why:-not all satisfied}; running pip"
  req_args=()
  for f in "${REQ_FILES[@]}"; do req_args+=(-r "${f}"); done
  pip_install "${req_args[@]}" -c constraints.txt "${EXTRA_REQS[@]}"
  CHANGED=1
  STEP="verify dependencies"
  why="$(pins_satisfied constraints.txt "${REQ_FILES[@]}" "${EXTRA_REQS[@]}" 2>&1)" ||
    die "pip finished but the environment does not match the pins: ${why}"
fi

STEP="install maxtext package"
if [[ "${INSTALL_PACKAGE}" != "1" ]]; then
  log "package: skipped (INSTALL_PACKAGE=${INSTALL_PACKAGE})"
elif [[ "${FORCE}" != "1" ]] && package_installed_here; then
  log "package: maxtext already installed (editable) from ${REPO}, skipping"
else
  pip_install --no-deps -e "${REPO}"
  CHANGED=1
fi

if [[ "${CHANGED}" == "0" ]]; then
  log "nothing to install (FORCE=1 re-runs pip and the import check)"
elif [[ "${INSTALL_PACKAGE}" == "1" ]]; then
  STEP="smoke check"
  # Run from / so that the import goes through the installed package, not the current directory.
  (cd / && "${PYTHON}" -c 'import jax, flax, optax, orbax.checkpoint, grain, MaxText; print("[setup] import ok: jax", jax.__version__, "| MaxText from", MaxText.__path__[0])') ||
    die "installed, but 'import MaxText' (or a core dependency) fails; see the traceback above"
fi

# unpack_aside DIR MARKER REQ...: pip-installs REQ... (no deps) into DIR unless DIR/MARKER exists. These
# packages stay out of the environment (importable, they make every JAX process probe for a TPU or a GPU);
# train_compile and its tests put DIR on PYTHONPATH.
unpack_aside() {
  local dir="$1" marker="$2"
  shift 2
  if [[ -e "${dir}/${marker}" ]]; then
    log "$*: already in ${dir}"
  else
    rm -rf "${dir}"
    pip_install --no-deps --target "${dir}" "$@"
  fi
}

STEP="unpack libtpu for train_compile's TPU targets"
unpack_aside "${LIBTPU_TARGET_DIR}" "${LIBTPU_REQ/==/-}.dist-info" "${LIBTPU_REQ}"
STEP="unpack JAX's CUDA plugin for train_compile's GPU targets"
unpack_aside "${CUDA_PLUGIN_TARGET_DIR}" "jax_cuda12_pjrt-${JAX_VERSION}.dist-info" \
  "jax-cuda12-plugin==${JAX_VERSION}" "jax-cuda12-pjrt==${JAX_VERSION}"

trap - ERR
log "done in $((SECONDS - START_TIME))s (DEVICE=${DEVICE}). Next: bash unit_test_and_lint.sh"
