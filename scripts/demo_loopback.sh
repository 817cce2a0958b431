#!/usr/bin/env bash
# Score the demo chat log end to end over real HTTP, with no API key: a loopback
# OpenAI-compatible server (the test suite's scripted keyword judge) stands in for the judge model.
# Usage: bash scripts/demo_loopback.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-reports/demo}"
log="$(mktemp)"
python -m tests.fakes.openai_server --port 0 --responder tests.fakes.keyword_judge:respond >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q READY "$log" && break; sleep 0.1; done
base="$(awk '/READY/{print $2}' "$log")"
[ -n "$base" ] || { echo "the loopback judge did not start:" >&2; cat "$log" >&2; exit 1; }
# score prints each verdict with the sub-questions answered "yes" and their evidence
psyjudge score datasets/demo/chat_log.jsonl --rubric self_harm --out "$out" \
  --judge openai/fake-judge --api-base "$base" --cache-dir "$out/.cache"
