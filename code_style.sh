#!/usr/bin/env bash
# Formats the Python code with black (settings in pyproject.toml: line length 110, Python 3.11).
#
#   bash code_style.sh           # rewrite files in place
#   bash code_style.sh --check   # change nothing; print a diff and exit non-zero if any file needs formatting
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
MODE="format"
case "${1:-}" in
  "") ;;
  --check) MODE="check" ;;
  -h | --help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "code_style.sh: unknown argument '$1' (use --check or nothing)" >&2; exit 2 ;;
esac

# Directories that hold Python, in this order; a missing or Python-free directory is skipped.
TARGETS=()
for dir in MaxText benchmarks end_to_end; do
  if [[ -d "${dir}" ]] && [[ -n "$(find "${dir}" -name '*.py' -print -quit)" ]]; then
    TARGETS+=("${dir}")
  fi
done
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  echo "[code_style] no Python files under MaxText/, benchmarks/ or end_to_end/; nothing to do"
  exit 0
fi

"${PYTHON}" -m black --version >/dev/null 2>&1 || {
  echo "[code_style] black is not installed for ${PYTHON}; run: bash setup.sh" >&2
  exit 1
}

if [[ "${MODE}" == "check" ]]; then
  echo "[code_style] black --check ${TARGETS[*]}"
  rc=0
  "${PYTHON}" -m black --check --diff --no-color "${TARGETS[@]}" || rc=$?
  if [[ ${rc} -eq 1 ]]; then
    echo "[code_style] FAILED: the files above need formatting. Fix with: bash code_style.sh" >&2
    exit 1
  elif [[ ${rc} -ne 0 ]]; then
    echo "[code_style] FAILED: black could not parse a file (exit ${rc}); see the error above" >&2
    exit "${rc}"
  fi
else
  echo "[code_style] black ${TARGETS[*]}"
  "${PYTHON}" -m black "${TARGETS[@]}"
fi
