#!/usr/bin/env bash
# Usage: run.sh BEFORE_BIN AFTER_BIN OUT_DIR [SECONDS]
# Runs load.py against each build in the order A B B A, with 1 and 8 clients, each run in a
# fresh data directory; one JSON line per run in OUT_DIR/runs.jsonl.
set -euo pipefail
A=$1; B=$2; OUT=$3; SECS=${4:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
: > "$OUT/runs.jsonl"
one() {
    local label=$1 bin=$2 clients=$3
    local d; d=$(mktemp -d)
    "$bin" init --data-dir "$d/data" --key-file "$d/k" > /dev/null 2>&1
    "$bin" clients create --data-dir "$d/data" --key-file "$d/k" --name officer --role security-officer --scopes system/AuditEvent.rs > "$d/officer.json" 2>/dev/null
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['client_secret'], end='')" "$d/officer.json" > "$d/officer.secret"
    local officer; officer=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['client_id'])" "$d/officer.json")
    "$bin" clients create --data-dir "$d/data" --key-file "$d/k" --name load --role facility-system --organization Organization/load \
        --scopes 'system/*.cruds' --budget-per-hour 100000000 --budget-per-day 100000000 --rate-per-second 1000000 --burst 1000000 --max-concurrent 100000 > "$d/client.json" 2>/dev/null
    local cid secret; cid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['client_id'])" "$d/client.json")
    secret=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['client_secret'])" "$d/client.json")
    "$bin" clients approve "$cid" --approver-id "$officer" --approver-secret-file "$d/officer.secret" --data-dir "$d/data" --key-file "$d/k" > /dev/null 2>&1
    BRANKAS_LOG=warn "$bin" serve --insecure-http --listen 127.0.0.1:0 --data-dir "$d/data" --key-file "$d/k" > "$d/listen" 2> "$d/log" &
    local pid=$!
    while ! grep -q url "$d/listen" 2>/dev/null; do sleep 0.1; done
    local url; url=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['url'].rsplit('/fhir',1)[0])" "$d/listen")
    local r; r=$(python3 "$HERE/load.py" "$url" "$cid" "$secret" "$clients" "$SECS")
    kill "$pid"; wait "$pid" || true
    echo "{\"build\": \"$label\", \"run\": $r}" | tee -a "$OUT/runs.jsonl"
    rm -rf "$d"
}
for clients in 1 8; do
    one A "$A" $clients
    one B "$B" $clients
    one B "$B" $clients
    one A "$A" $clients
done
