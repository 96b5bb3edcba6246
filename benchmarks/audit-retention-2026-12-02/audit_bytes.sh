#!/usr/bin/env bash
# usage: audit_bytes.sh DATA_DIR  -> where the bytes of brankas.audit.db go, on a copy of it
# (WAL checkpointed and VACUUMed, so the figures are the file's live content).
set -euo pipefail
src=$1/brankas.audit.db
tmp=$(mktemp -d)
cp "$src" "$tmp/a.db"; [ -f "$src-wal" ] && cp "$src-wal" "$tmp/a.db-wal"
sqlite3 "$tmp/a.db" "PRAGMA wal_checkpoint(TRUNCATE); VACUUM;" >/dev/null
bytes=$(stat -c %s "$tmp/a.db")
sqlite3 -json "$tmp/a.db" "
WITH t AS (SELECT name, SUM(pgsize) AS bytes FROM dbstat GROUP BY name),
     r AS (SELECT COUNT(*) AS records, AVG(length(sealed)) AS sealed_avg, SUM(length(sealed)) AS sealed_sum FROM audit_log)
SELECT (SELECT json_group_object(name, bytes) FROM t) AS by_btree, r.records, ROUND(r.sealed_avg, 1) AS sealed_avg_bytes, r.sealed_sum,
       $bytes AS file_bytes, ROUND($bytes * 1.0 / r.records, 1) AS file_bytes_per_record,
       (SELECT COUNT(*) FROM audit_checkpoints) AS checkpoints, (SELECT COUNT(*) FROM audit_nodes) AS nodes FROM r"
rm -rf "$tmp"
