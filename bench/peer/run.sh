#!/usr/bin/env bash
# Brankas against Helios HFS, side by side: see BENCHMARKS.md, "Against Helios HFS 0.2.7".
#
#   bench/peer/run.sh [--brankas BIN] [--hfs BIN] [--bundles N] [--duration S] [--out DIR]
#                     [--warmup S] [--order brankas,hfs,hfs,brankas] [--corpus DIR] [--keep]
#
# Needs wrk (Debian: apt-get install -y wrk) and Python 3 (standard library only).
# Writes DIR/results.json and DIR/results.md (default DIR: peer-results); exits non-zero if a
# server does not start, a load fails or a phase answers mostly errors.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v wrk >/dev/null || { echo "run.sh: wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "run.sh: python3 is not installed" >&2; exit 1; }
exec python3 "$here/peer.py" --command "bench/peer/run.sh $*" "$@"
