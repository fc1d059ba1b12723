#!/usr/bin/env bash
# Conversations at load, measured from outside (issue: conversations and
# agents): 1,000 conversations answered concurrently through contenox's
# POST /chats/{id}/chat against the fast fake OpenAI backend of
# ../shared/bench/llm, beside the same concurrency straight at the
# backend (added latency = Warden minus direct, per percentile); then
# RSS with N (default 10,000) conversations active and after they
# passivate.
#
#   cargo build --release && benches/conversations.sh   (DUR=10, N=10000)
#   PERF=/tmp/conv.perf ...   also records a profile of the loaded window
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${DUR:-10}"
N="${N:-10000}"
C="${C:-1000}"
BENCH=../shared/bench/llm
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/warden-target}"
LLM_TARGET="$HOME/.cache/warden-bench/llm-target"
CARGO_TARGET_DIR="$LLM_TARGET" cargo build --quiet --release --locked --manifest-path "$BENCH/fake-openai/Cargo.toml"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
ulimit -n 65536 || true

"$LLM_TARGET/release/fake-openai" --listen 127.0.0.1:0 --model bench-model >"$work/fake.out" 2>&1 &
for _ in $(seq 100); do grep -qo '127.0.0.1:[0-9]*' "$work/fake.out" && break; sleep 0.05; done
fake="http://$(grep -o '127.0.0.1:[0-9]*' "$work/fake.out" | head -1)"

idle=20
printf '[conversations]\nidle_passivate_secs = %d\n' "$idle" >"$work/warden.toml"
WARDEN_ADMIN_USERNAME=bench WARDEN_ADMIN_PASSWORD=bench-password-1 WARDEN_LOG=warn \
  "$TARGET/release/warden" serve --listen 127.0.0.1:0 --data-dir "$work/data" --config "$work/warden.toml" >"$work/warden.out" 2>&1 &
wpid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/warden.out" && break; sleep 0.05; done
warden="$(sed -n 's/^warden listening on //p' "$work/warden.out")"
token="$(curl -s "$warden/auth/login" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench-password-1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')"
api() { curl -s -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
backend="$(api "$warden/backends" -d "{\"name\":\"fake\",\"type\":\"openai\",\"baseUrl\":\"$fake\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
api -X POST "$warden/backend-affinity/internal_chat_group/backends/$backend" >/dev/null
api "$warden/models" -d '{"model":"bench-model"}' >/dev/null
api -X POST "$warden/model-affinity/internal_chat_group/models/bench-model" >/dev/null
for _ in $(seq 100); do api "$warden/backends/$backend" | grep -q '"healthy":true' && break; sleep 0.1; done

rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$wpid/status"; }
live() { api "$warden/admin/actors" | python3 -c '
import json, sys
t = json.load(sys.stdin)
print(sum(len(k["children"]) for k in t["children"] if k["name"] == "conversations"))'; }
ticks() { awk '{print $14 + $15}' "/proc/$wpid/stat"; }
hz="$(getconf CLK_TCK)"

# N conversations (created in parallel through the API).
python3 - "$warden" "$token" "$N" >"$work/chats" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def make(i):
    req = urllib.request.Request(base + "/chats", method="POST",
        data=json.dumps({"model": "bench-model", "subject": f"bench {i}"}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["id"]
with ThreadPoolExecutor(16) as pool:
    for cid in pool.map(make, range(n)):
        print(cid)
PY
head -n "$C" "$work/chats" >"$work/active"
base_rss="$(rss)"
echo "warden $(git rev-parse --short HEAD), fake backend $fake, $N conversations stored, ${DUR}s per figure, RSS before any is active ${base_rss} MiB"

sed 's/MODEL/bench-model/' "$BENCH/chat.json" >"$work/chat.json"
WRK_BODY_FILE="$work/chat.json" wrk -t1 -c"$C" -d"${DUR}s" --latency -s "$BENCH/post.lua" \
  "$fake/v1/chat/completions" | grep '^RESULT' | sed "s/^RESULT/RESULT direct c=$C/"
[ -n "${PERF:-}" ] && { perf record -F 199 -e cpu-clock --call-graph dwarf,16384 -p "$wpid" -o "${PERF}" -- sleep 3 >/dev/null 2>&1 & }
t0="$(ticks)"
line="$(WRK_CHATS="$work/active" WRK_AUTH="$token" wrk -t1 -c"$C" -d"${DUR}s" --latency \
  -s benches/conversations.lua "$warden" | grep '^RESULT' | sed "s/^RESULT/RESULT warden c=$C/")"
t1="$(ticks)"
n="$(echo "$line" | sed -n 's/.* n=\([0-9]*\).*/\1/p')"
echo "$line cpu_us_per_msg=$(( (t1 - t0) * 1000000 / hz / (n > 0 ? n : 1) ))"
echo "after the load: $(live) conversation actors live, RSS $(rss) MiB"

# Every conversation active once (one message each), then idle.
WRK_CHATS="$work/chats" WRK_AUTH="$token" wrk -t1 -c64 -d"$(( N / 1000 + 5 ))s" \
  -s benches/conversations.lua "$warden" >/dev/null
active="$(live)"
active_rss="$(rss)"
echo "RESULT active conversations=$active rss_mib=$active_rss per_conversation_kib=$(( (active_rss - base_rss) * 1024 / (active > 0 ? active : 1) ))"
sleep $(( idle * 2 + 5 ))
passive="$(live)"
passive_rss="$(rss)"
echo "RESULT passivated live_actors=$passive rss_mib=$passive_rss per_conversation_kib=$(( (passive_rss - base_rss) * 1024 / active ))"

# The same 10,000 active again: what the passivated actors freed is
# reused (RSS grows by little), though the allocator kept it.
WRK_CHATS="$work/chats" WRK_AUTH="$token" wrk -t1 -c64 -d"$(( N / 1000 + 5 ))s" \
  -s benches/conversations.lua "$warden" >/dev/null
again="$(live)"
again_rss="$(rss)"
echo "RESULT active_again conversations=$again rss_mib=$again_rss grew_mib=$(( again_rss - passive_rss ))"
