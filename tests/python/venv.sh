#!/usr/bin/env bash
# Creates (or refreshes) the Python virtualenv of the client tests at $BRANKAS_VENV
# (default target/ci-venv) from tests/python/requirements.txt. Idempotent: does nothing when
# the venv already holds exactly these requirements.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${BRANKAS_VENV:-target/ci-venv}
req=tests/python/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else "Python 3.9+ is needed for the client tests")'
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if ! "$py" -m venv "$venv" 2>/dev/null; then
    # Debian's own python3 keeps venv/ensurepip in a separate package.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "venv.sh: installing python3-venv" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$venv"
        "$py" -m venv "$venv"
    else
        echo "venv.sh: '$py -m venv' failed; install python3-venv" >&2
        exit 1
    fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
echo "$want" > "$stamp"
