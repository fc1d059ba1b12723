#!/usr/bin/env python3
"""Schedules at scale (WORKFLOWS.md §6), measured from outside the release
server: N enabled minutely schedules (vareon myntrix tasks), each running a
one-task workflow.

It creates the schedules, then watches MINUTES whole minutes that begin
after the creation ended. For each it reports the fire skew of every
schedule (its run's `start_time` minus the occurrence, from the schedule's
history), how long until every run had started, and the server's CPU
between fires (from /proc/<pid>/stat, from 5 s after the last fire to 5 s
before the next occurrence) and RSS.

SPREAD=0: every schedule fires at second 0 of the minute (`0 * * * * *`),
          N runs started at once.
SPREAD=1: schedule i fires at second i % 60 of every minute, N/60 a second.

usage: cargo build --release; python3 benches/workflow/schedules.py
       (N=10000 SPREAD=0 MINUTES=2 WARDEN_BIN=...)
"""
import datetime, json, os, resource, shutil, statistics, subprocess, sys, tempfile, threading, time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

BIN = os.environ.get('WARDEN_BIN', os.path.join(
    os.environ.get('CARGO_TARGET_DIR', os.path.expanduser('~/.cache/warden-target')), 'release', 'warden'))
N = int(os.environ.get('N', '10000'))
SPREAD = os.environ.get('SPREAD', '0') == '1'
MINUTES = int(os.environ.get('MINUTES', '2'))
USER, PASSWORD = 'bench', 'Bench-Passw0rd!'
TICKS = os.sysconf('SC_CLK_TCK')

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(data):
    env = dict(os.environ, WARDEN_ADMIN_USERNAME=USER, WARDEN_ADMIN_PASSWORD=PASSWORD,
               WARDEN_ADMIN_EMAIL='bench@example.com', WARDEN_LOG='error')
    p = subprocess.Popen([BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', data],
                         stdout=subprocess.PIPE, env=env)
    line = p.stdout.readline().decode().strip()
    return p, line.split()[-1]


def call(base, method, path, body=None, tok=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header('content-type', 'application/json')
    if tok:
        req.add_header('authorization', 'Bearer ' + tok)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b'null')


def cpu_seconds(pid):
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024


def ms(iso):
    return datetime.datetime.fromisoformat(iso.replace('Z', '+00:00')).timestamp() * 1000


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    tmp = tempfile.mkdtemp()
    p, base = start(os.path.join(tmp, 'data'))
    tok = call(base, 'POST', '/auth/login', {'username': USER, 'password': PASSWORD})['accessToken']
    steps = json.dumps([{'id': 'a', 'handler': 'noop',
                         'transition': {'branches': [{'operator': 'default', 'goto': 'end'}]}}])
    wf = call(base, 'POST', '/api/neosyntis/workflows/', {'name': 'tick', 'steps': steps}, tok)
    idle_rss = rss_mib(p.pid)
    second = (lambda i: i % 60) if SPREAD else (lambda i: 0)

    def create(i):
        s = call(base, 'POST', '/api/myntrix/tasks/', {
            'name': f's{i}', 'schedule': f'{second(i)} * * * * *', 'enabled': True,
            'action': {'type': 'workflow', 'workflow_id': wf['id']}}, tok)
        return s['id'], second(i)
    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        schedules = list(pool.map(create, range(N)))
    print(f'{N} schedules created in {time.monotonic() - t0:.1f} s '
          f'({"spread over the minute" if SPREAD else "all at second 0"}); '
          f'RSS {rss_mib(p.pid):.0f} MiB (idle before {idle_rss:.0f} MiB)', flush=True)

    for _ in range(MINUTES):
        # The first whole minute that begins at least 3 s from now.
        minute = (int(time.time() + 3) // 60 + 1) * 60
        time.sleep(max(0, minute - time.time()))
        # Every run of this minute started: wait for the last occurrence, then the fires.
        last = minute + (59 if SPREAD else 0)
        time.sleep(max(0, last - time.time()) + 1)

        def skew(entry):
            sid, sec = entry
            occurrence = (minute + sec) * 1000
            while True:
                h = call(base, 'GET', f'/api/myntrix/tasks/history/{sid}?limit=3', None, tok)
                starts = [ms(r['start_time']) for r in h if r.get('start_time')]
                fired = [t for t in starts if occurrence <= t < occurrence + 60_000]
                if fired:
                    return min(fired) - occurrence
                if time.time() * 1000 > occurrence + 55_000:
                    return None
                time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:
            skews = list(pool.map(skew, schedules))
        missing = sum(1 for s in skews if s is None)
        skews = [s for s in skews if s is not None]
        settled = (minute + (60 if SPREAD else max(5, max(skews) / 1000 + 5)))
        # CPU between fires: from 5 s after the last fire to 5 s before the next
        # occurrence (with SPREAD, every second has fires: the whole minute counts).
        if SPREAD:
            window_start, window_end = minute + 60, minute + 115
        else:
            window_start, window_end = max(time.time(), settled), minute + 55
        time.sleep(max(0, window_start - time.time()))
        c0, w0 = cpu_seconds(p.pid), time.monotonic()
        time.sleep(max(1, window_end - time.time()))
        cpu = (cpu_seconds(p.pid) - c0) / (time.monotonic() - w0) * 100
        print(f'minute {datetime.datetime.fromtimestamp(minute, datetime.timezone.utc):%H:%M}: '
              f'{len(skews)} fired, {missing} missing; skew p50 {pct(skews, 0.5):.0f} ms, '
              f'p99 {pct(skews, 0.99):.0f} ms, max {max(skews):.0f} ms; '
              f'CPU {"over the next minute" if SPREAD else "between fires"} {cpu:.1f}% of a core; '
              f'RSS {rss_mib(p.pid):.0f} MiB', flush=True)
    p.kill()
    p.wait()
    shutil.rmtree(tmp, ignore_errors=True)


main()
