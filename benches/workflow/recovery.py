#!/usr/bin/env python3
"""Recovery after kill -9 (WORKFLOWS.md §6), measured from outside the
release server.

Each trial starts RUNS neuronest workflow runs of three steps (a hook call
to a loopback tool server, then two echo steps), waits until every run is
parked inside its hook call (the tool server holds the calls), kills the
server with SIGKILL and starts it again on the same data directory with the
tool server now answering at once. It reports:
  boot      kill -9 -> the new process listening
  resumed   the new process started -> the tool server has seen every
            interrupted run's call again (each run re-activated and acting)
  finished  the new process started -> every run completed
and checks that no run is lost and no call is made twice after the restart
(each call's idempotency key is the one it had before the kill).

usage: cargo build --release; python3 benches/workflow/recovery.py
       (RUNS=1000 TRIALS=5 WARDEN_BIN=...)
"""
import asyncio, json, os, shutil, signal, statistics, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import call, login, start, wait_for  # noqa: E402

RUNS = int(os.environ.get('RUNS', '1000'))
TRIALS = int(os.environ.get('TRIALS', '5'))



class ToolServer:
    """A hook's tool server on raw asyncio: GET /openapi.json, and POST
    /hold, which holds every call unanswered until `answer` is set."""

    def __init__(self):
        self.answer = False
        self.seen = {}  # phase -> {idempotency key: calls}
        self.phase = 'before'
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._conn, '127.0.0.1', 0, backlog=4096))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def keys(self, phase):
        with self.lock:
            return dict(self.seen.get(phase, {}))

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b'\r\n\r\n')
                lines = head.decode('latin-1').split('\r\n')
                method, path, _ = lines[0].split(' ', 2)
                headers = {}
                for line in lines[1:]:
                    if ':' in line:
                        k, v = line.split(':', 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get('content-length', '0')))
                if path == '/openapi.json':
                    out = json.dumps({'openapi': '3.0.0', 'paths': {'/hold': {'post': {
                        'operationId': 'hold',
                        'requestBody': {'content': {'application/json': {}}}}}}})
                else:
                    key = headers.get('idempotency-key', '')
                    with self.lock:
                        seen = self.seen.setdefault(self.phase, {})
                        seen[key] = seen.get(key, 0) + 1
                    while not self.answer:
                        await asyncio.sleep(0.05)
                    out = json.dumps({'text': 'ok', 'echo': json.loads(body or b'null')})
                data = out.encode()
                writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n'
                             b'content-length: %d\r\n\r\n' % len(data) + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()










def trial(n):
    tools = ToolServer()
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, 'data')
    p, base = start(data)
    tok = login(base)
    call(base, 'POST', '/hooks/remote',
         {'name': 'tools', 'endpointUrl': f'http://127.0.0.1:{tools.port}', 'timeoutMs': 600000}, tok)
    wf = call(base, 'POST', '/api/orchestration/workflows', {'name': 'recover', 'steps': [
        {'id': 'A', 'name': 'call', 'task_type': 'hook', 'hook': {'name': 'tools', 'tool_name': 'hold'},
         'input_data': {'n': 1}},
        {'id': 'B', 'name': 'echo', 'task_type': 'echo', 'depends_on': ['A'], 'input_data': {'a': '${A.result.text}'}},
        {'id': 'C', 'name': 'echo', 'task_type': 'echo', 'depends_on': ['B'], 'input_data': {'b': '${B.result.a}'}},
    ]}, tok)
    ids = []
    lock = threading.Lock()

    def execute(k):
        for _ in range(k):
            x = call(base, 'POST', f"/api/orchestration/workflows/{wf['id']}/execute", {}, tok)
            with lock:
                ids.append(x['id'])
    threads = [threading.Thread(target=execute, args=(RUNS // 8 + (i < RUNS % 8),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for('every run to be parked in its call', lambda: len(tools.keys('before')) >= RUNS)
    before = tools.keys('before')
    tools.phase = 'after'
    tools.answer = True
    killed = time.monotonic()
    p.send_signal(signal.SIGKILL)
    p.wait()
    t0 = time.monotonic()
    p, base = start(data)
    listening = time.monotonic()
    resumed = wait_for('every run to call again', lambda: len(tools.keys('after')) >= RUNS)
    tok = login(base)

    def finished():
        done = 0
        for i in ids:
            x = call(base, 'GET', f'/api/orchestration/tasks/{i}', None, tok)
            done += x['status'] in ('completed', 'failed', 'cancelled')
        return done == len(ids)
    end = wait_for('every run to end', finished)
    statuses = {}
    for i in ids:
        s = call(base, 'GET', f'/api/orchestration/tasks/{i}', None, tok)['status']
        statuses[s] = statuses.get(s, 0) + 1
    after = tools.keys('after')
    twice = sum(1 for c in after.values() if c > 1)
    new_keys = len(set(after) - set(before))
    p.send_signal(signal.SIGKILL)
    p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f'trial {n}: boot {(listening - killed) * 1e3:.0f} ms, resumed {(resumed - t0) * 1e3:.0f} ms, '
          f'finished {(end - t0) * 1e3:.0f} ms; runs {statuses}, calls made twice after the restart {twice}, '
          f'calls under a new key {new_keys}', flush=True)
    return (resumed - t0), statuses.get('completed', 0) == RUNS and twice == 0 and new_keys == 0


results = [trial(i + 1) for i in range(TRIALS)]
times = sorted(r[0] for r in results)
print(f'{RUNS} runs x {TRIALS} trials: resumed median {statistics.median(times) * 1e3:.0f} ms, '
      f'max {times[-1] * 1e3:.0f} ms; clean trials {sum(r[1] for r in results)}/{TRIALS}')
