#!/bin/bash
# Guard overhead: C = fa76a55 (audit), D = guard (budgets, canaries, limits). Order C D D C.
set -e
D=/work/abab2
H=/tmp/brankas-bench-guard
for x in C:/tmp/brankas-audit:1 D:/tmp/brankas-guard:1 D:/tmp/brankas-guard:2 C:/tmp/brankas-audit:2; do
  IFS=: read name bin rep <<< "$x"
  echo "== $name run $rep $(date +%T)" >&2
  $H --bin $bin --bundles 40 --duration 8 --warmup 2 --out $D/$name-$rep.json > $D/$name-$rep.md 2> $D/$name-$rep.err
done
echo "finished $(date +%T)" >&2
