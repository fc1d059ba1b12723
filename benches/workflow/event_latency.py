#!/usr/bin/env python3
"""Event latencies at a fixed rate (WORKFLOWS.md §6), measured from
outside the release server.

  relay   events of a type whose trigger runs a function that sends an
          event (`sendEvent`) at RELAY_RATE/s (500) for SECONDS: from the
          client's POST to the sent event arriving on the client's
          `/events/stream/bench.relayed` (server-sent events).
  invoke  events of a type whose trigger runs a function at
          INVOKE_RATE/s (2,000) for SECONDS: from the event's commit
          (`created_at`, set by the server) to its function run's start
          (`finishedAt - durationMs` of `/activity/operations`), over the
          1,000 newest runs (the route's limit).

usage: cargo build --release; python3 benches/workflow/event_latency.py
       (RELAY_RATE=500 INVOKE_RATE=2000 SECONDS=10 WARDEN_BIN=...)
"""
import http.client, json, os, shutil, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ms, pct, start, USER, PASSWORD  # noqa: E402

RELAY_RATE = int(os.environ.get('RELAY_RATE', '500'))
INVOKE_RATE = int(os.environ.get('INVOKE_RATE', '2000'))
SECONDS = float(os.environ.get('SECONDS', '10'))




class Client:
    def __init__(self, base):
        self.host = urlparse(base)
        self.tok = None
        self.local = threading.local()

    def call(self, method, path, body=None):
        if not hasattr(self.local, 'c'):
            self.local.c = http.client.HTTPConnection(self.host.hostname, self.host.port, timeout=60)
        headers = {'content-type': 'application/json'}
        if self.tok:
            headers['authorization'] = 'Bearer ' + self.tok
        self.local.c.request(method, path, body=json.dumps(body) if body is not None else None,
                             headers=headers)
        r = self.local.c.getresponse()
        return r.status, json.loads(r.read() or b'null')






def paced(client, rate, event_type, sent=None):
    """Posts rate events a second for SECONDS; answers the rate achieved."""
    t0 = time.monotonic()
    n = int(rate * SECONDS)

    def post(i):
        if sent is not None:
            sent[str(i)] = time.monotonic()
        status, body = client.call('POST', '/events', {
            'event_type': event_type, 'aggregate_type': 'a', 'aggregate_id': str(i),
            'version': 1, 'data': {'k': str(i)}})
        assert status == 201, (status, body)
        return body
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for i in range(n):
            time.sleep(max(0, t0 + i / rate - time.monotonic()))
            futures.append(pool.submit(post, i))
        bodies = [f.result() for f in futures]
    return n / (time.monotonic() - t0), bodies


def main():
    tmp = tempfile.mkdtemp()
    p, base = start(os.path.join(tmp, 'data'))
    c = Client(base)
    c.tok = c.call('POST', '/auth/login', {'username': USER, 'password': PASSWORD})[1]['accessToken']
    for name, script, listen in [
        ('relay', 'function relay(event) { sendEvent("bench.relayed", {src: event.data.k}); return {}; }',
         'bench.src'),
        ('count', 'function count(event) { return {n: event.nid}; }', 'bench.count'),
    ]:
        assert c.call('POST', '/functions', {'name': name, 'script': script})[0] == 201
        assert c.call('POST', '/event-triggers', {'name': name, 'type': 'function',
                                                   'listenFor': {'type': listen}, 'function': name})[0] == 201

    # relay: the client's POST -> the sent event on the client's stream.
    arrived = {}
    ready = threading.Event()

    def listen():
        s = http.client.HTTPConnection(c.host.hostname, c.host.port, timeout=120)
        s.request('GET', '/events/stream/bench.relayed', headers={'authorization': 'Bearer ' + c.tok})
        r = s.getresponse()
        ready.set()
        for line in r:
            if line.startswith(b'data:'):
                try:
                    e = json.loads(line[5:])
                except ValueError:
                    continue
                arrived[str(e['data']['src'])] = time.monotonic()
    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    time.sleep(0.5)
    sent = {}
    rate, _ = paced(c, RELAY_RATE, 'bench.src', sent)
    end = time.monotonic() + 10
    while len(arrived) < len(sent) and time.monotonic() < end:
        time.sleep(0.1)
    lat = [(arrived[k] - sent[k]) * 1000 for k in sent if k in arrived]
    print(f'relay at {rate:.0f} events/s: {len(lat)}/{len(sent)} sent events arrived; POST -> stream '
          f'p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms', flush=True)

    # invoke: an event's commit -> its function run's start (server clocks).
    rate, bodies = paced(c, INVOKE_RATE, 'bench.count')
    committed = {b['nid']: ms(b['created_at']) for b in bodies}
    time.sleep(2)
    ops = c.call('GET', '/activity/operations?limit=1000')[1]
    lat = [ms(o['finishedAt']) - o['durationMs'] - committed[o['eventNid']]
           for o in ops if o['eventNid'] in committed and o.get('finishedAt')]
    print(f'invoke at {rate:.0f} events/s: commit -> function run start over the {len(lat)} newest runs: '
          f'p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms', flush=True)
    p.kill()
    p.wait()
    shutil.rmtree(tmp, ignore_errors=True)


main()
