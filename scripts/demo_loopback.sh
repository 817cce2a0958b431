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
psyjudge score datasets/demo/chat_log.jsonl --rubric self_harm --out "$out" \
  --judge openai/fake-judge --api-base "$base" --cache-dir "$out/.cache"
python - "$out/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    tier = next((t for t in v["tiers"] if t["tier"] == v["decided_by"]), None)
    yes = [f"{a['question_id']}: \"{a['evidence'][:60]}\"" for a in (tier or {}).get("answers", []) if a["value"] == "yes"]
    print(f"{v['record_id']:<10} {v['label']:<10} rule={tier and tier['fired_rule']}")
    for item in yes:
        print(f"{'':<10} yes  {item}")
PY
