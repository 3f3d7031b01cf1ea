#!/usr/bin/env bash
# Runs every check CI runs, in order, and exits non-zero if any of them fails:
#   1. style   bash code_style.sh --check                      (black)
#   2. lint    pylint on MaxText/ and benchmarks/              (fails on F/E/W, C0302 too-many-lines,
#                                                              R0915 too-many-statements; other C/R only shown)
#   3. tests   python3 -m pytest --pyargs MaxText.tests -q     (CPU, persistent JAX compilation cache)
#              fast lane before a commit: PYTEST_ARGS='-m not(slow)' SKIP_E2E=1 (skips @pytest.mark.slow;
#              a few minutes on 2 cores; CI runs everything)
#   4. e2e     bash end_to_end/<each>.sh                       (stops at the first script that fails;
#                                                              end_to_end/_*.sh are helpers, not run)
# All stages run even if an earlier one fails, so one run shows every problem; a summary with each stage's
# wall time closes the output.
#
# Environment knobs:
#   PYTHON=python3          interpreter (default python3)
#   PYTEST_ARGS="-k attn"   extra pytest arguments, split on spaces (e.g. -x, -k EXPR, -m not(slow))
#   SKIP_STYLE=1 SKIP_LINT=1 SKIP_TESTS=1 SKIP_E2E=1   skip a stage (CI skips none)
#   JAX_PLATFORMS           defaults to cpu; JAX_COMPILATION_CACHE_DIR defaults to ~/.cache/maxtext/jax_cache
#   SUMMARY_FILE=path       also write the closing test-count line there (used by .ci/run)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")" || exit 1

PYTHON="${PYTHON:-python3}"
# Shared by tests and end-to-end scripts: CPU by default, and a persistent compilation cache so re-runs
# skip XLA compilation (entries of any size and compile time are kept).
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${HOME}/.cache/maxtext/jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="${JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES:-0}"
mkdir -p "${JAX_COMPILATION_CACHE_DIR}"

TMP_DIR="$(mktemp -d)"
trap 'rm -rf "${TMP_DIR}"' EXIT

STAGE_LINES=()
FAILED=()
TEST_COUNTS=""
RUN_START="${EPOCHREALTIME}"

elapsed() { awk -v a="$1" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }
banner() { printf '\n========== %s ==========\n' "$*"; }

# run_stage NAME SKIP_VAR FUNCTION: runs FUNCTION unless SKIP_VAR=1, records PASS/FAIL/SKIP and time.
run_stage() {
  local name="$1" skip_var="$2" fn="$3" start status detail=""
  if [[ "${!skip_var:-0}" == "1" ]]; then
    STAGE_LINES+=("$(printf '%-6s SKIP   %7s   (%s=1)' "${name}" "-" "${skip_var}")")
    return 0
  fi
  banner "${name}"
  start="${EPOCHREALTIME}"
  STAGE_DETAIL=""
  if "${fn}"; then status="PASS"; else status="FAIL"; FAILED+=("${name}"); fi
  detail="${STAGE_DETAIL}"
  STAGE_LINES+=("$(printf '%-6s %-6s %6ss   %s' "${name}" "${status}" "$(elapsed "${start}")" "${detail}")")
  echo "[${name}] ${status} in $(elapsed "${start}")s ${detail}"
}

# ---------------------------------------------------------------------------------------------------------
stage_style() {
  bash code_style.sh --check
}

# Pylint exit status is a bit mask: 1 fatal, 2 error, 4 warning, 8 refactor, 16 convention, 32 usage error.
PYLINT_FAIL_MASK=$((1 | 2 | 4 | 32))
SIZE_CHECKS_RE=': (C0302|R0915) '

# run_pylint LABEL ARGS...: runs pylint, returns 1 on F/E/W/usage errors or on a size-check message.
run_pylint() {
  local label="$1" out rc=0 size_hits
  shift
  out="${TMP_DIR}/pylint_${label}.txt"
  echo "[lint] pylint ($label) $*"
  "${PYTHON}" -m pylint --rcfile=.pylintrc "$@" 2>&1 | tee "${out}" || rc=$?
  size_hits="$(grep -cE "${SIZE_CHECKS_RE}" "${out}" || true)"
  if ((rc & PYLINT_FAIL_MASK)) || [[ "${size_hits}" != "0" ]]; then
    local why=()
    ((rc & 1)) && why+=("fatal")
    ((rc & 2)) && why+=("error")
    ((rc & 4)) && why+=("warning")
    ((rc & 32)) && why+=("usage error")
    [[ "${size_hits}" != "0" ]] && why+=("${size_hits} size-check (C0302/R0915)")
    echo "[lint] ${label}: FAILED: $(IFS=/ && echo "${why[*]}") messages above (pylint exit ${rc})" >&2
    return 1
  fi
  if ((rc != 0)); then
    echo "[lint] ${label}: ok (only convention/refactor messages above, which do not fail the build)"
  else
    echo "[lint] ${label}: clean"
  fi
}

has_python() { [[ -d "$1" ]] && [[ -n "$(find "$1" -name '*.py' -print -quit)" ]]; }

stage_lint() {
  local ok=0 main_targets=()
  "${PYTHON}" -m pylint --version >/dev/null 2>&1 || { echo "[lint] pylint not installed; run: bash setup.sh" >&2; return 1; }
  has_python MaxText || { echo "[lint] no Python files under MaxText/" >&2; return 1; }
  main_targets+=(MaxText)
  if has_python benchmarks; then main_targets+=(benchmarks); fi
  run_pylint code "${main_targets[@]}" --ignore=tests || ok=1
  if has_python MaxText/tests; then
    # pytest idioms: fixtures arrive as arguments named like the fixture functions, tests reach into private
    # helpers, and test names say what docstrings would.
    run_pylint tests MaxText/tests \
      --disable=redefined-outer-name,protected-access,missing-module-docstring,missing-class-docstring,missing-function-docstring ||
      ok=1
  fi
  return "${ok}"
}

stage_tests() {
  local out="${TMP_DIR}/pytest.txt" rc=0 summary
  echo "[tests] JAX_PLATFORMS=${JAX_PLATFORMS} JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR}"
  echo "[tests] ${PYTHON} -m pytest --pyargs MaxText.tests -q --durations=15 ${PYTEST_ARGS:-}"
  # shellcheck disable=SC2086  # PYTEST_ARGS is split into words on purpose
  "${PYTHON}" -m pytest --pyargs MaxText.tests -q --durations=15 ${PYTEST_ARGS:-} 2>&1 | tee "${out}" || rc=$?
  summary="$(count_tests "${out}")"
  if [[ -n "${summary}" ]]; then
    TEST_COUNTS="${summary}"
    STAGE_DETAIL="(${summary})"
  fi
  case "${rc}" in
    0) return 0 ;;
    1) echo "[tests] FAILED: some tests failed (see above)" >&2 ;;
    2) echo "[tests] FAILED: test run interrupted or collection errors (exit 2; see above)" >&2 ;;
    5) echo "[tests] FAILED: pytest collected no tests from MaxText.tests (exit 5). Is MaxText/tests/ a package" \
      "(with __init__.py) holding test_*.py files, and does PYTEST_ARGS select any?" >&2 ;;
    *) echo "[tests] FAILED: pytest exited with ${rc} (see above)" >&2 ;;
  esac
  return 1
}

# count_tests FILE: turns pytest's closing line into "N passed, N failed[, N skipped]" (errors count as failed).
count_tests() {
  local line passed failed errors skipped
  line="$(grep -E '[0-9]+ (passed|failed|error|errors|skipped)' "$1" | grep -E ' in [0-9.]+s' | tail -n 1)"
  [[ -n "${line}" ]] || return 0
  passed="$(grep -oE '[0-9]+ passed' <<<"${line}" | grep -oE '[0-9]+' || echo 0)"
  failed="$(grep -oE '[0-9]+ failed' <<<"${line}" | grep -oE '[0-9]+' || echo 0)"
  errors="$(grep -oE '[0-9]+ errors?' <<<"${line}" | grep -oE '[0-9]+' || echo 0)"
  skipped="$(grep -oE '[0-9]+ skipped' <<<"${line}" | grep -oE '[0-9]+' || echo 0)"
  echo "${passed} passed, $((failed + errors)) failed, ${skipped} skipped"
}

stage_e2e() {
  local scripts=() script start
  shopt -s nullglob
  scripts=(end_to_end/[!_]*.sh) # _*.sh are helpers sourced by the scenarios, not scenarios
  shopt -u nullglob
  if [[ ${#scripts[@]} -eq 0 ]]; then
    echo "[e2e] no end_to_end/*.sh scenario scripts; nothing to run"
    STAGE_DETAIL="(no scripts)"
    return 0
  fi
  for script in "${scripts[@]}"; do
    echo "[e2e] ---- bash ${script}"
    start="${EPOCHREALTIME}"
    if ! bash "${script}" </dev/null; then
      echo "[e2e] FAILED: ${script} (after $(elapsed "${start}")s); later scripts were not run" >&2
      STAGE_DETAIL="(${script} failed)"
      return 1
    fi
    echo "[e2e] ok: ${script} ($(elapsed "${start}")s)"
  done
  STAGE_DETAIL="(${#scripts[@]} scripts)"
}

# ---------------------------------------------------------------------------------------------------------
echo "[unit_test_and_lint] repo: $(pwd -P); python: $(command -v "${PYTHON}") ($("${PYTHON}" -c 'import sys; print(sys.version.split()[0])'))"
run_stage style SKIP_STYLE stage_style
run_stage lint SKIP_LINT stage_lint
run_stage tests SKIP_TESTS stage_tests
run_stage e2e SKIP_E2E stage_e2e

banner "summary"
for line in "${STAGE_LINES[@]}"; do echo "${line}"; done
echo "total  $(elapsed "${RUN_START}")s"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "RESULT: FAILED (${FAILED[*]})"
else
  echo "RESULT: PASSED"
fi
# Last line: the plain test count, so a reader (or CI) sees how many tests ran.
if [[ -n "${TEST_COUNTS}" ]]; then
  echo "tests: ${TEST_COUNTS}"
  if [[ -n "${SUMMARY_FILE:-}" ]]; then echo "tests: ${TEST_COUNTS}" >"${SUMMARY_FILE}"; fi
fi
[[ ${#FAILED[@]} -eq 0 ]]
