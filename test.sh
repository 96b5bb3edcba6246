#!/usr/bin/env bash
# The project's one test command: every Rust test of the workspace (unit, integration, doc
# tests, and the benchmark harness in smoke mode), then the Python client tests (fhirpy
# against a real server). Exits non-zero on any failure.
#
# The shared corpus is found through BRANKAS_CORPUS, default ../shared/corpus beside the
# repository. Python packages go to a virtualenv under target/ci-venv (created on first run).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${BRANKAS_CORPUS:-}" ] && [ -d ../shared/corpus ]; then
    BRANKAS_CORPUS=$(cd ../shared/corpus && pwd)
    export BRANKAS_CORPUS
fi
tests/python/venv.sh
# The HTTP crate builds without brankas-auth's `operator` feature: no network path can make
# the operator's principal (ARCHITECTURE.md, brankas-api).
cargo build -p brankas-api --lib --locked
cargo test --workspace --locked
# cargo test built target/debug/brankas (the brankas crate's integration tests need it).
tests/python/run.sh
