#!/usr/bin/env python3
"""Parked runs (WORKFLOWS.md §6), measured from outside the release
server: N neuronest runs of a one-step workflow whose step is a `job`
task, all waiting for workers.

It reports the server's RSS idle (after the first login) and once every
run waits for its job, the live execution actors then (the admin actor
tree), the CPU the server spends while the runs wait, and then how long
workers (8 threads: lease, then done) take to finish every job and the
runs to complete.

usage: cargo build --release; python3 benches/workflow/parked.py
       (N=10000 WARDEN_BIN=...)
"""
import os, shutil, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_seconds, login, request, rss_mib, start, wait_for  # noqa: E402

N = int(os.environ.get('N', '10000'))











def count_executions(tree):
    n = 1 if str(tree.get('name', '')).startswith('execution:') else 0
    return n + sum(count_executions(c) for c in tree.get('children') or [])


def by_status(base, tok):
    return request(base, 'GET', '/api/executions/_statistics/summary', None, tok)[1]['byStatus']




def main():
    tmp = tempfile.mkdtemp()
    p, base = start(os.path.join(tmp, 'data'))
    tok = login(base)
    time.sleep(1)
    idle = rss_mib(p.pid)
    _, wf = request(base, 'POST', '/api/orchestration/workflows', {'name': 'wait', 'steps': [
        {'id': 'A', 'name': 'review', 'task_type': 'job', 'job': {'type': 'review', 'valid_for': '1h'},
         'input_data': {'doc': 1}}]}, tok)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda _: request(base, 'POST', f"/api/orchestration/workflows/{wf['id']}/execute", {}, tok)[0],
            range(N)))
    assert all(s in (200, 201, 202) for s in statuses), set(statuses)
    started = time.monotonic() - t0
    wait_for('every run to wait', lambda: by_status(base, tok).get('running', 0) == N, 600, 0.5)
    time.sleep(3)
    tree = request(base, 'GET', '/admin/actors', None, tok)[1]
    live = count_executions(tree)
    rss = rss_mib(p.pid)
    c0, w0 = cpu_seconds(p.pid), time.monotonic()
    time.sleep(20)
    cpu = (cpu_seconds(p.pid) - c0) / (time.monotonic() - w0) * 100
    print(f'{N} runs started in {started:.1f} s; all waiting for their job: RSS {rss:.0f} MiB, '
          f'idle {idle:.0f} MiB, {rss - idle:.0f} MiB above idle; {live} live execution actors; '
          f'CPU while they wait {cpu:.1f}% of a core', flush=True)

    lock = threading.Lock()
    finished = [0]

    def worker(_):
        while True:
            s, job = request(base, 'POST', '/leases',
                          {'leaserId': 'w', 'leaseDuration': '5m', 'jobTypes': ['review']}, tok)
            if s != 201:
                return
            request(base, 'PATCH', f"/jobs/{job['id']}/done", {'leaserId': 'w'}, tok)
            with lock:
                finished[0] += 1
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    done_jobs = time.monotonic() - t0
    wait_for('every run to complete', lambda: by_status(base, tok).get('completed', 0) == N, 600, 0.5)
    total = time.monotonic() - t0
    print(f'workers finished {finished[0]} jobs in {done_jobs:.1f} s; every run completed '
          f'{total:.1f} s after the first lease; RSS {rss_mib(p.pid):.0f} MiB', flush=True)
    p.kill()
    p.wait()
    shutil.rmtree(tmp, ignore_errors=True)


main()
