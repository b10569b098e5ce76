#!/usr/bin/env bash
# Test-order independence, checked by hand (not part of `make test`, which shuffles with the fixed seed in
# pyproject.toml): runs every test file alone, in file order, then the whole suite with the files in reverse
# order, and prints a pass/fail table per file. A file that passes alone but fails in the reversed suite (or the
# other way round) shares state with another file.
#
#   bash scripts/check_test_isolation.sh              # every tests/**/test_*.py
#   bash scripts/check_test_isolation.sh tests/generators/test_contract.py tests/test_store.py
#
# Slow (the suite once per file plus once more): run it on a quiet machine. Extra pytest arguments go in
# PYTEST_ARGS, e.g. PYTEST_ARGS="-m 'not slow'". Exit status: 0 when every run passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
# no shuffling, so each run is in the order asked for; -o addopts= drops pyproject's --randomly-seed, an
# option that exists only while the randomly plugin is loaded
PYTEST=("$PYTHON" -m pytest -q -p no:randomly -p no:cacheprovider -o addopts=)
eval "extra=(${PYTEST_ARGS:-})"

if [ $# -gt 0 ]; then
    files=("$@")
else
    mapfile -t files < <(find tests -name 'test_*.py' | sort)
fi
[ ${#files[@]} -gt 0 ] || { echo "check_test_isolation: no test files found" >&2; exit 1; }

logs=$(mktemp -d)
declare -A alone
for f in "${files[@]}"; do
    log="$logs/$(echo "$f" | tr '/' '_').log"
    "${PYTEST[@]}" "${extra[@]}" "$f" >"$log" 2>&1
    case $? in
        0) alone[$f]=pass ;;
        5) alone[$f]="no tests" ;;
        *) alone[$f]=FAIL ;;
    esac
    printf '%-55s alone: %s\n' "$f" "${alone[$f]}"
done

reversed=()
for ((i = ${#files[@]} - 1; i >= 0; i--)); do reversed+=("${files[i]}"); done
"${PYTEST[@]}" -rfE "${extra[@]}" "${reversed[@]}" >"$logs/reversed.log" 2>&1
suite=$?

status=0
echo
printf '%-55s %-9s %s\n' "file" "alone" "in the reversed suite"
for f in "${files[@]}"; do
    # the reversed run's short summary names each failing test as FAILED/ERROR <file>::<test>
    if grep -qE "^(FAILED|ERROR) $f(::| )" "$logs/reversed.log"; then together=FAIL; else together=pass; fi
    [ "$suite" -ne 0 ] && [ "$suite" -ne 1 ] && together="not run (pytest exit $suite)"
    printf '%-55s %-9s %s\n' "$f" "${alone[$f]}" "$together"
    { [ "${alone[$f]}" = FAIL ] || [ "$together" != pass ]; } && status=1
done
echo
echo "logs: $logs (one per file; reversed.log for the whole suite)"
exit $status
