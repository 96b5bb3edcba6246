#!/usr/bin/env bash
# Makes sure SoftHSM2 (Debian's softhsm2: a PKCS#11 module and softhsm2-util) is installed,
# installing it when run as root. The tests make their own tokens, each in a directory of
# its own (SOFTHSM2_CONF), so nothing is started here.
set -euo pipefail
if command -v softhsm2-util >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ]; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "softhsm.sh: installing Debian's softhsm2" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
else
    echo "softhsm.sh: SoftHSM2 is not installed (apt-get install softhsm2)" >&2
    exit 1
fi
