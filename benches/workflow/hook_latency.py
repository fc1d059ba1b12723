#!/usr/bin/env python3
"""Start -> complete latency of a workflow's runs at a fixed rate: starts
RATE runs a second (neuronest execute) for SECONDS, then reads each run's
startedAt and completedAt (AIWM's execution view, milliseconds).

usage: hook_latency.py BASE TOKEN WORKFLOW_ID RATE SECONDS
"""
import http.client, json, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ms  # noqa: E402

base, tok, wf, rate, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
host = urlparse(base)
local = threading.local()


def call(method, path, body=None):
    if not hasattr(local, 'c'):
        local.c = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    local.c.request(method, path, body=json.dumps(body) if body is not None else None,
                    headers={'authorization': 'Bearer ' + tok, 'content-type': 'application/json'})
    r = local.c.getresponse()
    return json.loads(r.read() or b'null')




ids = []
t0 = time.monotonic()
n = int(rate * seconds)
with ThreadPoolExecutor(16) as pool:
    futures = []
    for i in range(n):
        time.sleep(max(0, t0 + i / rate - time.monotonic()))
        futures.append(pool.submit(call, 'POST', f'/api/orchestration/workflows/{wf}/execute', {}))
    ids = [f.result()['id'] for f in futures]
achieved = n / (time.monotonic() - t0)
time.sleep(1)
lat = []
with ThreadPoolExecutor(8) as pool:
    for x in pool.map(lambda i: call('GET', f'/api/executions/{i}'), ids):
        if x.get('status') == 'completed':
            lat.append(ms(x['completedAt']) - ms(x['startedAt']))
lat.sort()
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f'  at {achieved:.0f} runs/s (half load): {len(lat)}/{n} completed; start->complete '
      f'p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {lat[-1]:.1f} ms')
