#!/usr/bin/env bash
# Runs the Python client tests (a real, unmodified fhirpy against a real `brankas serve`).
# Needs the brankas binary: $BRANKAS_BIN, default <target>/debug/brankas (cargo build -p brankas).
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/python/venv.sh
# The Node.js client's packages, exactly as locked (only when they changed).
if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    (cd tests/js && npm ci --silent --no-audit --no-fund)
fi
venv=${BRANKAS_VENV:-target/ci-venv}
export BRANKAS_BIN=${BRANKAS_BIN:-${CARGO_TARGET_DIR:-target}/debug/brankas}
set +e
"$venv/bin/python" -m pytest tests/python -p no:cacheprovider -v "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    # pytest's "no tests collected": the client tests vanished, which is a failure here.
    echo "tests/python/run.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
