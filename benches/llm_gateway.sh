#!/usr/bin/env bash
# The LLM gateway's overhead, measured as ../shared/bench/llm/README.md
# says: the same load straight at the fake OpenAI backend and through
# Warden's /v1/chat/completions, back to back, at C = 1, 16 and 64,
# whole (wrk) and streamed (stream-bench, time to first byte); Warden's
# CPU per request from /proc/PID/stat over each window, and its RSS.
#
#   cargo build --release && benches/llm_gateway.sh      (DUR=10 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${DUR:-10}"
BENCH=../shared/bench/llm
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/warden-target}"
LLM_TARGET="$HOME/.cache/warden-bench/llm-target"
CARGO_TARGET_DIR="$LLM_TARGET" cargo build --quiet --release --locked --manifest-path "$BENCH/fake-openai/Cargo.toml"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

"$LLM_TARGET/release/fake-openai" --listen 127.0.0.1:0 --model bench-model >"$work/fake.out" 2>&1 &
for _ in $(seq 100); do grep -qo '127.0.0.1:[0-9]*' "$work/fake.out" && break; sleep 0.05; done
fake="http://$(grep -o '127.0.0.1:[0-9]*' "$work/fake.out" | head -1)"

WARDEN_ADMIN_USERNAME=bench WARDEN_ADMIN_PASSWORD=bench-password-1 WARDEN_LOG=warn \
  "$TARGET/release/warden" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/warden.out" 2>&1 &
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

sed 's/MODEL/bench-model/' "$BENCH/chat.json" >"$work/chat.json"
sed 's/MODEL/bench-model/' "$BENCH/chat-stream.json" >"$work/chat-stream.json"
ticks() { awk '{print $14 + $15}' "/proc/$wpid/stat"; }
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$wpid/status"; }
hz="$(getconf CLK_TCK)"

whole() { # label url auth conns
  WRK_BODY_FILE="$work/chat.json" WRK_AUTH="$3" wrk -t1 -c"$4" -d"${DUR}s" --latency \
    -s "$BENCH/post.lua" "$2/v1/chat/completions" | grep '^RESULT' | sed "s/^RESULT/RESULT $1/"
}
stream() { # label url auth conns
  local h=()
  [ -n "$3" ] && h=(-H "Authorization: Bearer $3")
  "$LLM_TARGET/release/stream-bench" --url "$2/v1/chat/completions" --body-file "$work/chat-stream.json" \
    "${h[@]}" -c "$4" -d "$DUR" --warmup 1 --label "$1" | grep '^RESULT'
}
echo "warden $(git rev-parse --short HEAD), fake backend $fake, ${DUR}s per figure, RSS at start $(rss) MiB"
for c in 1 16 64; do
  whole "direct c=$c" "$fake" "" "$c"
  t0="$(ticks)"
  line="$(whole "warden c=$c" "$warden" "$token" "$c")"
  t1="$(ticks)"
  n="$(echo "$line" | sed -n 's/.* n=\([0-9]*\).*/\1/p')"
  echo "$line cpu_us_per_req=$(( (t1 - t0) * 1000000 / hz / (n > 0 ? n : 1) )) rss_mib=$(rss)"
done
for c in 1 16 64; do
  stream "stream-direct c=$c" "$fake" "" "$c"
  t0="$(ticks)"
  line="$(stream "stream-warden c=$c" "$warden" "$token" "$c")"
  t1="$(ticks)"
  n="$(echo "$line" | sed -n 's/.* n=\([0-9]*\).*/\1/p')"
  echo "$line cpu_us_per_req=$(( (t1 - t0) * 1000000 / hz / (n > 0 ? n : 1) )) rss_mib=$(rss)"
done
