-- wrk script for Warden's workflow routes: POSTs BENCH_BODY (a file) to
-- the URL, with `{n}` in it replaced by a request counter, and the token
-- in WARDEN_TOKEN. Prints the WRKRESULT line of ../shared/bench/limits.
local token = os.getenv("WARDEN_TOKEN") or ""
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "r"))
local template = f:read("*a")
f:close()
local n = 0
local tag = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  local body = template:gsub("{n}", tag .. "-" .. n)
  return wrk.format(nil, nil, nil, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50.0), latency:percentile(99.0),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
