#!/usr/bin/env bash
# Runs every fuzz target for a bounded time with the stable toolchain. Installs cargo-fuzz
# (from crates.io, --locked) if it is missing. cargo-fuzz passes a few `-Z` flags to rustc:
# RUSTC_BOOTSTRAP=1 lets stable accept them, and `-s none` asks for no sanitizer (sanitizers
# need nightly's standard library); libFuzzer still finds panics, aborts, hangs and OOMs.
#
#   FUZZ_SECONDS   seconds per target (default 15)
#   FUZZ_TARGETS   space-separated subset of targets (default: all of `cargo fuzz list`)
#
# A crash stops the run (non-zero exit) with the input under fuzz/artifacts/<target>/; fix it
# and check the input in under fuzz/seeds/<target>/ so `cargo test -p brankas-fuzz` keeps it.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-15}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
cargo fuzz build -s none --release
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${secs}s" >&2
    cargo fuzz run -s none --release "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 2>&1 | tail -n 40
done
