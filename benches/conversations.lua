-- wrk script: each request is one user message to one of the chats
-- listed (one id per line) in $WRK_CHATS, in turn across connections,
-- through contenox's POST /chats/{id}/chat; prints one RESULT line.
local ids = {}
for line in io.lines(os.getenv("WRK_CHATS")) do
  ids[#ids + 1] = line
end
local auth = os.getenv("WRK_AUTH")
local next_id = 0
local body = '{"message":"What is the capital of France? Answer in two or three sentences."}'

request = function()
  next_id = next_id % #ids + 1
  return wrk.format("POST", "/chats/" .. ids[next_id] .. "/chat",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. auth}, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local n = summary.requests
  io.write(string.format(
    "RESULT n=%d secs=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "err_status=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    n, secs, n / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, e.connect, e.read, e.write, e.timeout))
end
