"""What the workflow benches share: the release server started on a
fresh data directory, JSON calls, the server's CPU and RSS from /proc,
times and percentiles. Imported by the scripts beside it."""
import datetime, json, os, resource, subprocess, time
import urllib.error
import urllib.request

BIN = os.environ.get('WARDEN_BIN', os.path.join(
    os.environ.get('CARGO_TARGET_DIR', os.path.expanduser('~/.cache/warden-target')), 'release', 'warden'))
USER, PASSWORD = 'bench', 'Bench-Passw0rd!'
TICKS = os.sysconf('SC_CLK_TCK')

# One connection is one descriptor: lift the soft limit to the hard one.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def start(data):
    """The release server on `data` with the bench admin; (process, base URL)."""
    env = dict(os.environ, WARDEN_ADMIN_USERNAME=USER, WARDEN_ADMIN_PASSWORD=PASSWORD,
               WARDEN_ADMIN_EMAIL='bench@example.com', WARDEN_LOG='error')
    p = subprocess.Popen([BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', data],
                         stdout=subprocess.PIPE, env=env)
    line = p.stdout.readline().decode().strip()
    return p, line.split()[-1]


def request(base, method, path, body=None, tok=None):
    """(status, JSON body) of one call; an error status is answered, not raised."""
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header('content-type', 'application/json')
    if tok:
        req.add_header('authorization', 'Bearer ' + tok)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b'null')
    except urllib.error.HTTPError as e:
        return e.code, None


def call(base, method, path, body=None, tok=None):
    """The JSON body of one call that must succeed."""
    status, out = request(base, method, path, body, tok)
    if status >= 400:
        raise SystemExit(f'{method} {path} answered {status}')
    return out


def login(base):
    return call(base, 'POST', '/auth/login', {'username': USER, 'password': PASSWORD})['accessToken']


def wait_for(what, check, limit=120, every=0.01):
    """Polls `check` until it holds; the monotonic time it did."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return time.monotonic()
        time.sleep(every)
    raise SystemExit(f'timed out waiting for {what}')


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
    """An RFC 3339 time as Unix milliseconds."""
    return datetime.datetime.fromisoformat(iso.replace('Z', '+00:00')).timestamp() * 1000


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]
