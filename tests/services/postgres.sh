#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the tests on a private port (default 55432), with TLS
# (a certificate from a CA of its own, $BRANKAS_PG_DIR/ca.crt, default target/pg/ca.crt), and
# prints the URL of its database; installs Debian's server package first when it is missing
# (as root). Idempotent: a server already running in the directory is reused.
#
#   url=$(tests/services/postgres.sh)      # then BRANKAS_TEST_DATABASE_URL=$url
#   tests/services/postgres.sh stop
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${BRANKAS_PG_DIR:-$PWD/target/pg}
port=${BRANKAS_PG_PORT:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "postgres.sh: installing Debian's postgresql" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    else
        echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
fi
# The server refuses to run as root: as the postgres user when root.
as() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
if [ "${1:-}" = stop ]; then
    as "$bin/pg_ctl -D '$dir/data' -m fast stop" >&2 || true
    exit 0
fi
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
    as "$bin/initdb -D '$dir/data' -A trust -U brankas --no-sync" >/dev/null
    # A certificate authority of the tests' own ($dir/ca.crt, which the tests trust) and a
    # server certificate for 127.0.0.1 signed by it, so the tests can speak TLS to it.
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=brankas test CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 30 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    cp "$dir/server.crt" "$dir/server.key" "$dir/data/"
    chmod 600 "$dir/data/server.key"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/data/server.crt" "$dir/data/server.key"
fi
if ! as "$bin/pg_ctl -D '$dir/data' status" >/dev/null 2>&1; then
    as "$bin/pg_ctl -D '$dir/data' -w -l '$dir/log' -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c ssl=on\" start" >&2
fi
echo "postgres://brankas@127.0.0.1:$port/postgres"
