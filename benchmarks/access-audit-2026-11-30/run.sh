#!/bin/bash
# Before/after: A = 59ba2bf (no access control), B = 0cc39f5 (access control), C = audit (HEAD).
# Order A B C C B A so that drift of the shared machine falls evenly on each build.
set -e
D=/work/abab
H=/tmp/brankas-bench-audit
for x in A:/work/scale/bin/brankas:1 B:/tmp/brankas-ac:1 C:/tmp/brankas-audit:1 C:/tmp/brankas-audit:2 B:/tmp/brankas-ac:2 A:/work/scale/bin/brankas:2; do
  IFS=: read name bin rep <<< "$x"
  echo "== $name run $rep $(date +%T)" >&2
  $H --bin $bin --bundles 40 --duration 8 --warmup 2 --out $D/$name-$rep.json > $D/$name-$rep.md 2> $D/$name-$rep.err
done
echo "finished $(date +%T)" >&2
