#!/usr/bin/env bash
# Fuzzes the webhook reader for a bounded time (default 60 s). Seeds: fuzz/seeds/webhook
# (checked in, real-shaped deliveries); new finds go to fuzz/corpus/webhook (ignored);
# crashes to fuzz/artifacts/webhook. cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP
# enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/webhook
RUSTC_BOOTSTRAP=1 cargo fuzz run webhook fuzz/corpus/webhook fuzz/seeds/webhook -- \
  -max_total_time="$seconds" -timeout=10
