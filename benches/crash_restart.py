#!/usr/bin/env python3
# Crash to serving again, from outside the release server: a PUT to a node
# whose actor is alive, and one sent right behind a crash of its actor
# (fault injection), each crash outside the last one's intensity window.
# cargo build --release; python3 benches/crash_restart.py (WARDEN_BIN to override)
import json, subprocess, time, urllib.request, statistics, os, sys
BIN=os.environ.get('WARDEN_BIN', os.path.expanduser('~/.cache/warden-target/release/warden'))
env=dict(os.environ, WARDEN_ADMIN_USERNAME='admin', WARDEN_ADMIN_PASSWORD='admin-password-1', WARDEN_LOG='error')
# restart policy generous so 200 crashes never exhaust it
os.makedirs('/tmp/warden-crash-bench', exist_ok=True); os.chdir('/tmp/warden-crash-bench'); __import__('shutil').rmtree('data', ignore_errors=True); open('w.toml','w').write('[supervision.nodes]\nmax_restarts = 1000000\nwithin = 100\nbackoff = 100\nmax_backoff = 5000\n')
p=subprocess.Popen([BIN,'serve','--listen','127.0.0.1:0','--data-dir','data','--enable-fault-injection','--config','w.toml'],stdout=subprocess.PIPE,env=env)
base=p.stdout.readline().decode().strip().split()[-1]
def call(m,path,body=None,tok=None):
    req=urllib.request.Request(base+path,method=m,data=json.dumps(body).encode() if body is not None else None)
    req.add_header('content-type','application/json')
    if tok: req.add_header('authorization','Bearer '+tok)
    with urllib.request.urlopen(req) as r: return json.loads(r.read() or b'null')
tok=call('POST','/auth/login',{'username':'admin','password':'admin-password-1'})['accessToken']
nid=call('POST','/api/nodes',{'nodeId':'c1','name':'c','cpuCores':4,'ramTotal':1024},tok)['_id']
call('PUT','/api/nodes/'+nid,{'name':'warm'},tok)
def put(i):
    t=time.perf_counter(); call('PUT','/api/nodes/'+nid,{'name':'n%d'%i},tok); return time.perf_counter()-t
base_lat=[put(i) for i in range(200)]
after=[]
for i in range(100):
    call('POST','/admin/actors/node:%s/crash'%nid,{},tok)
    pass
    after.append(put(i))
    time.sleep(0.15)
tree=call('GET','/admin/actors',None,tok)
p.terminate(); p.wait()
ms=lambda xs:'p50 %.2f ms p99 %.2f ms'%(statistics.median(xs)*1e3, sorted(xs)[int(len(xs)*0.99)-1]*1e3)
print('PUT, actor alive:         ', ms(base_lat))
print('PUT right after a crash:  ', ms(after))
