#!/usr/bin/env bash
# The cost of the disclosure path (issue 13): A = d21cf25 (before), B = 89643e5 (disclosure as
# a value: Admitted/Disclosure/Receipt, before the other issue-13 changes), release builds of
# each, run by the same harness in the order A B B A. Usage: run.sh BIN_DIR OUT_DIR
set -euo pipefail
bins=$1; out=$2
corpus=${BRANKAS_CORPUS:-$(cd "$(dirname "$0")/../../../shared/corpus" && pwd)}
mkdir -p "$out"
i=0
for b in A B B A; do
    i=$((i+1))
    "$bins/brankas-bench" --bin "$bins/brankas-$b" --corpus "$corpus" --bundles 40 --duration 5 --warmup 1 --out "$out/$i-$b.json" > "$out/$i-$b.log" 2>&1
done
