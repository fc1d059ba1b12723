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
import datetime, json, os, shutil, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import call, cpu_seconds, login, ms, pct, rss_mib, start  # noqa: E402

N = int(os.environ.get('N', '10000'))
SPREAD = os.environ.get('SPREAD', '0') == '1'
MINUTES = int(os.environ.get('MINUTES', '2'))















def main():
    tmp = tempfile.mkdtemp()
    p, base = start(os.path.join(tmp, 'data'))
    tok = login(base)
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
