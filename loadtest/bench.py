#!/usr/bin/env python3
"""`make bench`: tollgate against a bare Pingora proxy, nginx and the upstream, in one run.

Cases (--cases; every server is started once, then measured in interleaved rounds):
  a   the upstream directly (nginx, 1 worker, 2-byte body)                 context
  b   nginx reverse proxy (1 worker, keep-alive upstream)                 context
  p   bare Pingora 0.9 (examples/bare_pingora.rs: one fixed peer, 1 thread,
      keep-alive pool 512, built with the same profile as tollgate)       THE REFERENCE
  c   tollgate, plain proxy, access log off
  l   tollgate, plain proxy, access log on (stdout to a file)
  d   tollgate + API key
  f   tollgate + JWT RS256 (verified-token cache)
  g   tollgate + JWT ES256 (verified-token cache)
  e   tollgate + API key + Redis fixed window (a quota that never refuses)
  h   tollgate + API key, 1,000 routes and 100,000 keys configured
  t2  tollgate plain, 2 worker threads, nothing pinned                    report only
  n2  nginx reverse proxy, 2 workers, nothing pinned                      report only
With --compare-profiles P: c, d and e again with tollgate built with profile P (rows c@P, d@P, e@P).
With --compare-binaries L=PATH: c, d and e again with the tollgate binary at PATH (rows c@L, ...),
e.g. a build of an earlier commit, to measure a change side by side in one run.

Rounds: every case once at each concurrency (--connections, 64 and 256), then every case
again, --rounds times (3). Per case and concurrency: median req/s, spread, p99, and the median
of the per-round ratios to p (p measured in the same round at the same concurrency).
Open loop: oha at one fixed arrival rate (--open-loop-share of the slower of p's and e's c64
median req/s, latency corrected for coordinated omission) against p and e.
Memory: tollgate's RSS with 1,000 and 10,000 idle keep-alive client connections.
Then the criterion micro-benchmarks (cargo bench --profile PROFILE --bench hot_path).

Load: wrk, 1 thread, keep-alive connections. Every proxy runs on CPU 0; wrk, oha, the
upstream and Redis on CPU 1 (taskset). tollgate: server.threads 1 (t2: 2), access log off
(l: on). Results go to loadtest/RESULTS.md (or --out) with the machine and the exact commands.

Needs: TARGET/PROFILE/tollgate and TARGET/PROFILE/examples/bare_pingora (TARGET: --target-dir,
default $CARGO_TARGET_DIR or ./target; PROFILE: --profile, default dist; `make bench` builds
both), wrk, oha (open loop; skipped with a note when missing), nginx, redis-server, redis-cli,
openssl, taskset, cargo (for criterion) and Python 3.9+ (standard library only). Every process
it starts is stopped on exit, also on Ctrl-C / SIGTERM / SIGHUP; if this script is killed
outright, its children get SIGKILL (PR_SET_PDEATHSIG) and the nginx workers that outlive their
master are stopped by the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import datetime
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROXY_CPU = 0
LOAD_CPU = 1
PEPPER_ENV = "TOLLGATE_KEY_PEPPER"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
JWT_ISSUER = "https://bench.tollgate.invalid/"
# More than this share of the machine used by other processes makes a run "busy".
BUSY_SHARE = 0.05
# tollgate's connection caps in the benchmark: above the largest idle-connection count.
BENCH_MAX_CONNECTIONS = 100_000
# A quota that never refuses during a benchmark.
NEVER_LIMIT = 1_000_000_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ----------------------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Runs in the child between fork and exec: die with the harness.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path):
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])


class Harness:
    """Starts processes, records their command lines, and stops them all at the end."""

    def __init__(self, run_dir: Path, pin: bool):
        self.run_dir = run_dir
        self.pin = pin
        self.procs: list[Proc] = []
        self.commands: list[tuple[str, str]] = []  # (what, command line), first use only
        self._seen: set[str] = set()
        self.masks: dict[str, str] = {}  # secret value -> placeholder in recorded commands

    def record(self, what: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        line = (prefix + " " if prefix else "") + shlex.join(argv)
        for secret, placeholder in self.masks.items():
            line = line.replace(secret, placeholder)
        # Placeholders must expand when the line is pasted into a shell: no single quotes.
        line = re.sub(r"'([^'$]*\$[A-Z][A-Z0-9_]*[^']*)'", r'"\1"', line)
        if line not in self._seen:
            self._seen.add(line)
            self.commands.append((what, line))

    def note(self, what: str) -> None:
        """A step that is not a command line (shown as a comment)."""
        self.commands.append((what, ""))

    def pinned(self, argv: list[str], cpu: int | None) -> list[str]:
        if cpu is None or not self.pin:
            return argv
        return ["taskset", "-c", str(cpu)] + argv

    def start(self, name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None,
              what: str | None = None, shown_env: dict[str, str] | None = None) -> Proc:
        """Starts argv (pinned to cpu) in its own process group; shown_env replaces env in
        the recorded command line (secrets)."""
        argv = self.pinned(argv, cpu)
        self.record(what or name, argv, shown_env if shown_env is not None else env)
        log_path = self.run_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=full_env, cwd=self.run_dir, start_new_session=True, preexec_fn=_child_setup,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if proc.alive():
            try:
                os.killpg(proc.pid, sig)  # the process and its children (nginx workers)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait(5)
        # Children left behind in the group (if the leader died first).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, timeout=3.0)


def clean_stale_runs() -> None:
    """Stops what an earlier run that was killed (SIGKILL) left behind: nginx workers outlive
    their master, which dies with the harness. Such processes have their cwd in the old run's
    dir, whose harness.pid names a process that is gone."""
    for d in Path(tempfile.gettempdir()).glob("tollgate-bench-*"):
        try:
            pid = int((d / "harness.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        try:
            if "bench.py" in Path(f"/proc/{pid}/cmdline").read_text():
                continue  # still running
        except OSError:
            pass
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if os.readlink(proc / "cwd").startswith(str(d)):
                    os.kill(int(proc.name), signal.SIGKILL)
                    log(f"stopped {proc.name}, left behind by a killed run in {d}")
            except OSError:
                pass
        shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited during startup (status {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n{proc.log_tail()}")


def process_tree(pid: int) -> list[int]:
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def proc_status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(pid: int, field: str) -> int:
    return sum(proc_status_kib(p, field) for p in process_tree(pid))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid and its descendants, all threads."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


def set_affinity_tree(pid: int, cpus: set[int]) -> None:
    for p in process_tree(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(task), cpus)
        except OSError:
            pass


def run_text(argv: list[str], **kw) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"<{argv[0]}: {e}>"


# ----------------------------------------------------------------------------- HTTP probe

def probe(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        res = conn.getresponse()
        body = res.read()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, body
    finally:
        conn.close()


def expect(cond: bool, what: str, status: int, hdrs: dict[str, str], body: bytes) -> None:
    if not cond:
        raise BenchError(f"sanity check failed: {what} (got {status}, headers {hdrs}, body {body[:200]!r})")



# ----------------------------------------------------------------------------- load generators

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    def latency(pct: str) -> float | None:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    reqs = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    if not rps or not reqs:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(rps.group(1)),
        "requests": int(reqs.group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


# oha's summary percentiles (seconds) reported for the open-loop case.
OHA_PERCENTILES = ("p50", "p90", "p99", "p99.9", "p99.99")


def parse_oha(text: str) -> dict:
    """oha --output-format json: achieved rate, latency percentiles (ms), errors. Requests cut
    off by the end of the run ("aborted due to deadline") are not errors."""
    try:
        doc = json.loads(text)
        summary, pct = doc["summary"], doc["latencyPercentiles"]
        statuses = {int(k): v for k, v in doc.get("statusCodeDistribution", {}).items()}
        errors = {k: v for k, v in doc.get("errorDistribution", {}).items() if "deadline" not in k}
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"cannot parse oha output ({e}):\n{text[:2000]}")
    return {
        "rps": float(summary["requestsPerSec"]),
        "requests": sum(statuses.values()),
        "latency_ms": {p: (pct[p] * 1000 if pct.get(p) is not None else None) for p in OHA_PERCENTILES},
        "max_ms": summary["slowest"] * 1000 if summary.get("slowest") is not None else None,
        "non2xx": sum(v for k, v in statuses.items() if not 200 <= k < 400),
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


class Load:
    def __init__(self, harness: Harness, args: argparse.Namespace):
        self.h = harness
        self.args = args

    def wrk_argv(self, port: int, path: str, headers: dict[str, str], seconds: float, connections: int) -> list[str]:
        argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "5s", "--latency"]
        for k, v in headers.items():
            argv += ["-H", f"{k}: {v}"]
        return argv + [f"http://127.0.0.1:{port}{path}"]

    def wrk(self, port: int, path: str, headers: dict[str, str], seconds: float, connections: int,
            pinned: bool, what: str) -> dict:
        argv = self.h.pinned(self.wrk_argv(port, path, headers, seconds, connections), LOAD_CPU if pinned else None)
        self.h.record(what, argv)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=_child_setup)
        if r.returncode != 0:
            raise BenchError(f"wrk failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return parse_wrk(r.stdout)

    def oha(self, port: int, path: str, headers: dict[str, str], rate: int, seconds: float, connections: int,
            what: str) -> dict:
        """Open loop: requests leave at a fixed rate whether or not earlier ones were answered,
        and each latency is counted from when its request was due (--latency-correction)."""
        argv = ["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds:g}s", "-q", str(rate),
                "--latency-correction", "-c", str(connections), "-t", "5s"]
        for k, v in headers.items():
            argv += ["-H", f"{k}: {v}"]
        argv = self.h.pinned(argv + [f"http://127.0.0.1:{port}{path}"], LOAD_CPU)
        self.h.record(what, argv)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=_child_setup)
        if r.returncode != 0:
            raise BenchError(f"oha failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return parse_oha(r.stdout)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


# ----------------------------------------------------------------------------- credentials

def api_key(rng: random.Random) -> str:
    chars = "".join(rng.choice(ALPHABET) for _ in range(40))
    return f"tg_{chars[:8]}_{chars[8:]}"


def key_hash(pepper: str, key: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_ecdsa_to_raw(der: bytes, size: int = 32) -> bytes:
    """ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) to the JWS r||s form."""
    def read_len(buf: bytes, i: int) -> tuple[int, int]:
        n = buf[i]
        if n < 0x80:
            return n, i + 1
        k = n & 0x7F
        return int.from_bytes(buf[i + 1:i + 1 + k], "big"), i + 1 + k

    if der[0] != 0x30:
        raise BenchError("openssl produced an unexpected ECDSA signature")
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise BenchError("openssl produced an unexpected ECDSA signature")
        n, i = read_len(der, i + 1)
        out += int.from_bytes(der[i:i + n], "big").to_bytes(size, "big")
        i += n
    return out


def make_jwt(alg: str, run_dir: Path, h: Harness) -> tuple[Path, str]:
    """A key pair made with the openssl CLI and a long-lived token signed with it."""
    key = run_dir / f"{alg.lower()}.key"
    pub = run_dir / f"{alg.lower()}.pub.pem"
    if alg == "RS256":
        gen = ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)]
    else:
        gen = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)]
    for argv in (gen, ["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)]):
        h.record(f"{alg} key", argv)
        subprocess.run(argv, check=True, capture_output=True)
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT"}
    claims = {"iss": JWT_ISSUER, "aud": "bench", "sub": "bench-user", "plan": "bench",
              "iat": now, "exp": now + 10 * 365 * 86400, "scope": "bench:read"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    argv = ["openssl", "dgst", "-sha256", "-sign", str(key)]
    h.record(f"{alg} token signature (stdin: header.payload)", argv)
    sig = subprocess.run(argv, input=signing_input.encode(), check=True, capture_output=True).stdout
    if alg == "ES256":
        sig = der_ecdsa_to_raw(sig)
    return pub, f"{signing_input}.{b64url(sig)}"



# ----------------------------------------------------------------------------- configs

def tollgate_yaml(run_dir: Path, name: str, port: int, upstream_port: int, *, auth: str | None = None,
                  key_hash_hex: str | None = None, redis_port: int | None = None,
                  jwt: tuple[str, Path] | None = None, routes: list[str] | None = None,
                  consumers_yaml: str = "", threads: int = 1, access_log: bool = False) -> str:
    y = [
        "# Generated by loadtest/bench.py",
        "server:",
        f"  threads: {threads}",
        f"  access_log: {'true' if access_log else 'false'}",
        # Every benchmark client is 127.0.0.1: the per-address cap (default 256) would refuse the
        # c256 runs' and the idle test's connections.
        f"  max_connections: {BENCH_MAX_CONNECTIONS}",
        f"  max_connections_per_ip: {BENCH_MAX_CONNECTIONS}",
        "  log_level: warn",
        "  watch_config: false",
        "  grace_period: 0s",
        "  graceful_shutdown_timeout: 1s",
        f"  pid_file: {run_dir}/{name}.pid",
        f"  upgrade_sock: {run_dir}/{name}.sock",
        "listeners:",
        f"  - address: 127.0.0.1:{port}",
        "upstreams:",
        "  - name: up",
        "    targets:",
        f"      - address: 127.0.0.1:{upstream_port}",
    ]
    if jwt or key_hash_hex or consumers_yaml:
        y += ["auth:", "  api_key:", f"    pepper_env: {PEPPER_ENV}"]
        if jwt:
            alg, pub = jwt
            y += ["  jwt:", f"    - issuer: {JWT_ISSUER}", "      audiences: [bench]", f"      algorithms: [{alg}]",
                  "      plan_claim: plan", "      default_plan: bench", f"      pem_files: [{{path: {pub}}}]"]
    if redis_port:
        y += ["plans:", "  - name: bench", "    algorithm: fixed_window",
              f"    limits: [{{requests: {NEVER_LIMIT}, per: 1s}}]",
              "rate_limit:", "  redis:", f"    urls: [\"redis://127.0.0.1:{redis_port}\"]",
              # A Redis problem shows up as 503s (counted as errors), never as a silent
              # fallback to the in-process limiter.
              "  failure_mode: closed", "  default_plan: bench"]
    elif key_hash_hex or jwt:
        y += ["plans:", "  - name: bench"]
    if key_hash_hex:
        y += ["consumers:", "  - id: bench", "    plan: bench", "    keys:",
              "      - id: bench-key", f"        hash: {key_hash_hex}"]
    if consumers_yaml:
        y.append(consumers_yaml.rstrip("\n"))
    y.append("routes:")
    methods = f"    auth: required\n    auth_methods: [{auth}]\n" if auth else ""
    for prefix in routes or ["/"]:
        rname = "bench" if prefix == "/" else prefix.strip("/").replace("/", "-")
        y.append(f"  - name: {rname}\n    path_prefix: {prefix}\n    upstream: up\n{methods}".rstrip("\n"))
    return "\n".join(y) + "\n"


def many_keys_yaml(pepper: str, n_keys: int, rng: random.Random) -> tuple[str, list[str]]:
    """`consumers:` with n_keys consumers of one key each; returns the YAML and a few keys."""
    lines = ["consumers:"]
    sample = []
    for i in range(n_keys):
        key = api_key(rng)
        if i % max(1, n_keys // 10) == 0 or i == n_keys // 2:
            sample.append(key)
        lines.append(f"  - id: c{i:06d}\n    keys: [{{id: k{i:06d}, prefix: {key[:11]}, hash: {key_hash(pepper, key)}}}]")
    return "\n".join(lines) + "\n", sample



# ----------------------------------------------------------------------------- cases

# Table order; the kind decides how a row is read: "context" and "report" rows are not
# targets, "reference" is what every ratio is to.
CASES = {
    "a": ("context", "upstream directly (nginx, 2-byte body)"),
    "b": ("context", "nginx reverse proxy (1 worker, keep-alive upstream)"),
    "p": ("reference", "bare Pingora 0.9 (one fixed peer, keep-alive pool 512)"),
    "c": ("tollgate", "tollgate plain, access log off"),
    "l": ("tollgate", "tollgate plain, access log on (to a file)"),
    "d": ("tollgate", "tollgate + API key"),
    "f": ("tollgate", "tollgate + JWT RS256 (cached)"),
    "g": ("tollgate", "tollgate + JWT ES256 (cached)"),
    "e": ("tollgate", "tollgate + API key + Redis fixed window"),
    "h": ("tollgate", "tollgate + API key, {routes:,} routes and {keys:,} keys"),
    "t2": ("report", "tollgate plain, 2 worker threads, nothing pinned"),
    "n2": ("report", "nginx reverse proxy, 2 workers, nothing pinned"),
}
DEFAULT_CASES = ",".join(CASES)
# What fails one case (a server that would not start or answer, a load generator that failed)
# without stopping the others.
CASE_ERRORS = (BenchError, OSError, http.client.HTTPException, subprocess.SubprocessError)
# The cases run again for every --compare-profiles profile.
PROFILE_CASES = ("c", "d", "e")


def profile_dir(profile: str) -> str:
    """Where cargo puts a profile's binaries (the dev profile's are in target/debug)."""
    return "debug" if profile in ("dev", "debug") else profile


class Target:
    """A server under test: started once, then measured once per round and concurrency."""

    def __init__(self, key: str, label: str, kind: str, port: int, *, path: str = "/",
                 headers: dict[str, str] | None = None, proxy: Proc | None = None, pinned: bool = True):
        self.key, self.label, self.kind = key, label, kind
        self.port, self.path, self.headers = port, path, headers or {}
        self.proxy = proxy  # None: the upstream itself (nothing of ours in between)
        self.pinned = pinned
        self.extra_procs: list[Proc] = []  # Redis
        self.runs: dict[int, list[dict]] = {}  # connections -> one result per round ("round" in it)
        self.failed: str | None = None
        self.info: dict = {}


class Bench:
    def __init__(self, args: argparse.Namespace, h: Harness):
        self.args = args
        self.h = h
        self.load = Load(h, args)
        self.run_dir = h.run_dir
        build = Path(args.target_dir).resolve()
        self.binary = build / profile_dir(args.profile) / "tollgate"
        self.bare_binary = build / profile_dir(args.profile) / "examples" / "bare_pingora"
        self.profile_binaries = {p: build / profile_dir(p) / "tollgate" for p in args.compare_profiles}
        self.profile_binaries.update({label: Path(path).resolve() for label, path in args.compare_binaries})
        self.pepper = "bench-pepper-" + os.urandom(12).hex()
        self.rng = random.Random(6)
        self.key = api_key(self.rng)
        h.masks[self.key] = "$API_KEY"
        self.targets: list[Target] = []
        self.open_loop: list[dict] = []
        self.open_loop_rate: int | None = None
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.upstream_port = free_port()
        self.upstream: Proc | None = None

    # --- servers
    def render(self, template: str, out_name: str, **vars) -> Path:
        text = (HERE / template).read_text()
        name = Path(out_name).stem
        for k, v in dict(vars, RUN_DIR=str(self.run_dir), NAME=name).items():
            text = text.replace("{{" + k + "}}", str(v))
        if "{{" in text:
            raise BenchError(f"{template}: unreplaced placeholder")
        out = self.run_dir / out_name
        out.write_text(text)
        (self.run_dir / f"{name}-tmp").mkdir(exist_ok=True)
        return out

    def start_nginx(self, name: str, conf: Path, port: int, cpu: int | None) -> Proc:
        proc = self.h.start(name, ["nginx", "-e", str(self.run_dir / f"{name}.error.log"), "-c", str(conf)], cpu,
                            what=f"{name} (config rendered from loadtest/{conf.name.split('.')[0].rstrip('-0123456789')}.conf)")
        wait_port(port, proc)
        return proc

    def start_upstream(self) -> None:
        conf = self.render("nginx-upstream.conf", "nginx-upstream.conf", UPSTREAM_PORT=self.upstream_port)
        self.upstream = self.start_nginx("nginx-upstream", conf, self.upstream_port, LOAD_CPU)
        status, hdrs, body = probe(self.upstream_port)
        expect(status == 200 and body == b"ok", "the upstream answers 200 \"ok\"", status, hdrs, body)

    def start_redis(self) -> tuple[Proc, int]:
        port = free_port()
        rdir = self.run_dir / f"redis-{port}"
        rdir.mkdir()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(rdir)]
        proc = self.h.start(f"redis-{port}", argv, LOAD_CPU, what="redis-server (own port)")
        wait_port(port, proc)
        return proc, port

    def start_tollgate(self, name: str, yaml: str, port: int, cpu: int | None, binary: Path | None = None) -> Proc:
        conf = self.run_dir / f"{name}.yaml"
        conf.write_text(yaml)
        env = {PEPPER_ENV: self.pepper}
        shown_env = {PEPPER_ENV: "$PEPPER"}
        argv = [str(binary or self.binary), "-c", str(conf)]
        check = subprocess.run(argv[:1] + ["check"] + argv[1:], capture_output=True, text=True,
                               env=dict(os.environ, **env), timeout=300)
        if check.returncode != 0:
            raise BenchError(f"tollgate check {conf} failed:\n{check.stdout}{check.stderr}")
        started = time.monotonic()
        proc = self.h.start(name, argv, cpu, env=env, shown_env=shown_env, what=f"tollgate ({name})")
        wait_port(port, proc, timeout=120)
        proc.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        return proc

    def stop_target(self, t: Target) -> None:
        if t.proxy:
            # tollgate and Pingora stop at once on SIGINT; nginx on SIGTERM.
            self.h.stop(t.proxy, signal.SIGTERM if t.proxy.name.startswith("nginx") else signal.SIGINT)
        for p in t.extra_procs:
            self.h.stop(p)

    # --- the cases (each starts its server, checks it, and returns it)
    def setup_direct(self) -> Target:
        return Target("a", CASES["a"][1], "context", self.upstream_port)

    def setup_nginx(self, key: str, workers: int, pinned: bool) -> Target:
        port = free_port()
        name = "nginx-proxy" if workers == 1 else f"nginx-proxy-{workers}"
        conf = self.render("nginx-proxy.conf", f"{name}.conf", PROXY_PORT=port, UPSTREAM_PORT=self.upstream_port,
                           WORKERS=workers)
        proxy = self.start_nginx(name, conf, port, PROXY_CPU if pinned else None)
        status, hdrs, body = probe(port)
        expect(status == 200 and body == b"ok", f"{name} answers 200 \"ok\"", status, hdrs, body)
        return Target(key, CASES[key][1], CASES[key][0], port, proxy=proxy, pinned=pinned)

    def setup_bare(self) -> Target:
        port = free_port()
        argv = [str(self.bare_binary), f"127.0.0.1:{port}", f"127.0.0.1:{self.upstream_port}"]
        proxy = self.h.start("bare-pingora", argv, PROXY_CPU, what="bare Pingora (examples/bare_pingora.rs)")
        wait_port(port, proxy)
        status, hdrs, body = probe(port)
        expect(status == 200 and body == b"ok", "bare Pingora answers 200 \"ok\"", status, hdrs, body)
        return Target("p", CASES["p"][1], "reference", port, proxy=proxy)

    def setup_tollgate(self, key: str, label: str, yaml_fn, headers: dict[str, str], *, kind: str = "tollgate",
                       path: str = "/", pinned: bool = True, anonymous_status: int = 200, limited: bool = False,
                       redis: bool = False, binary: Path | None = None) -> Target:
        redis_proc, redis_port = (self.start_redis() if redis else (None, None))
        port = free_port()
        name = f"tollgate-{key.replace('@', '-')}"
        t = Target(key, label, kind, port, path=path, headers=headers, pinned=pinned)
        if redis_proc:
            t.extra_procs.append(redis_proc)
            t.info["redis_port"] = redis_port
        try:
            t.proxy = self.start_tollgate(name, yaml_fn(name, port, redis_port), port, PROXY_CPU if pinned else None,
                                          binary)
            status, hdrs, body = probe(port, path, headers)
            expect(status == 200 and body == b"ok", f"{label}: 200 \"ok\" with the credential", status, hdrs, body)
            expect("x-request-id" in hdrs, f"{label}: X-Request-Id returned", status, hdrs, body)
            if limited:
                expect("ratelimit" in hdrs and "ratelimit-policy" in hdrs, f"{label}: RateLimit headers", status, hdrs, body)
            status, hdrs, body = probe(port, path)
            expect(status == anonymous_status, f"{label}: {anonymous_status} without a credential", status, hdrs, body)
        except BaseException:
            self.stop_target(t)
            raise
        t.info["startup_s"] = getattr(t.proxy, "startup_seconds", None)
        return t

    def setup_all(self) -> None:
        a = self.args
        up = self.upstream_port
        key_hdr = {"x-api-key": self.key}
        khash = key_hash(self.pepper, self.key)

        def plain(**kw):
            return lambda name, p, r: tollgate_yaml(self.run_dir, name, p, up, **kw)

        def with_key(**kw):
            return lambda name, p, r: tollgate_yaml(self.run_dir, name, p, up, auth="api_key", key_hash_hex=khash,
                                                    **kw)

        def jwt(key: str, alg: str) -> Target:
            pub, token = make_jwt(alg, self.run_dir, self.h)
            self.h.masks[token] = f"$JWT_{alg}"
            return self.setup_tollgate(
                key, CASES[key][1],
                lambda name, p, r: tollgate_yaml(self.run_dir, name, p, up, auth="jwt", jwt=(alg, pub)),
                {"Authorization": f"Bearer {token}"}, anonymous_status=401)

        # The cases another build can run too (--compare-profiles, --compare-binaries): config,
        # headers and setup options, one definition for both.
        variants = {
            "c": (plain(), {}, dict(anonymous_status=200)),
            "d": (with_key(), key_hdr, dict(anonymous_status=401)),
            "e": (lambda name, p, r: tollgate_yaml(self.run_dir, name, p, up, auth="api_key", key_hash_hex=khash,
                                                   redis_port=r),
                  key_hdr, dict(anonymous_status=401, limited=True, redis=True)),
        }

        def variant(key: str, name: str, what: str, **kw) -> Target:
            config, headers, options = variants[key]
            return self.setup_tollgate(name, what, config, headers, **options, **kw)

        setups = {
            "a": self.setup_direct,
            "b": lambda: self.setup_nginx("b", 1, True),
            "p": self.setup_bare,
            "c": lambda: variant("c", "c", CASES["c"][1]),
            "l": lambda: self.setup_tollgate("l", CASES["l"][1], plain(access_log=True), {}),
            "d": lambda: variant("d", "d", CASES["d"][1]),
            "f": lambda: jwt("f", "RS256"),
            "g": lambda: jwt("g", "ES256"),
            "e": lambda: variant("e", "e", CASES["e"][1]),
            "h": self.setup_many,
            "t2": lambda: self.setup_tollgate("t2", CASES["t2"][1], plain(threads=2), {}, kind="report",
                                              pinned=False),
            "n2": lambda: self.setup_nginx("n2", 2, False),
        }
        for key in CASES:
            if key in a.cases:
                self.guarded(key, setups[key])
        for prof, binary in self.profile_binaries.items():
            for key in PROFILE_CASES:
                if key in a.cases:
                    self.guarded(f"{key}@{prof}", lambda key=key, prof=prof, binary=binary: variant(
                        key, f"{key}@{prof}", f"{CASES[key][1]}, build {prof}", kind="profile", binary=binary))

    def setup_many(self) -> Target:
        a = self.args
        t0 = time.monotonic()
        consumers, sample = many_keys_yaml(self.pepper, a.keys, random.Random(7))
        routes = [f"/svc{i:04d}" for i in range(a.routes)]
        path = f"{routes[len(routes) // 2]}/items"
        key = sample[len(sample) // 2]
        self.h.masks[key] = "$API_KEY_H"
        log(f"case h: generated {a.routes} routes and {a.keys} keys in {time.monotonic() - t0:.1f}s")
        t = self.setup_tollgate(
            "h", CASES["h"][1].format(routes=a.routes, keys=a.keys),
            lambda name, p, r: tollgate_yaml(self.run_dir, name, p, self.upstream_port, auth="api_key",
                                             routes=routes, consumers_yaml=consumers),
            {"x-api-key": key}, path=path, anonymous_status=401)
        t.info["config_mib"] = (self.run_dir / "tollgate-h.yaml").stat().st_size / 2**20
        return t

    def guarded(self, key: str, fn) -> None:
        log(f"starting case {key}")
        try:
            self.targets.append(fn())
        except CASE_ERRORS as e:
            log(f"case {key} FAILED: {e}")
            self.failures.append(f"case {key}: {e}")

    # --- measuring
    def wrk_once(self, t: Target, connections: int, seconds: float, what: str) -> dict:
        """One wrk run against t; an unpinned case gets the upstream on every CPU meanwhile."""
        if t.proxy and not t.proxy.alive():
            raise BenchError(f"{t.proxy.name} exited (status {t.proxy.popen.returncode}):\n{t.proxy.log_tail()}")
        widen = not t.pinned and self.h.pin
        if widen:
            set_affinity_tree(self.upstream.pid, set(range(os.cpu_count() or 1)))
        try:
            cpu0 = tree_cpu_seconds(t.proxy.pid) if t.proxy else None
            r = self.load.wrk(t.port, t.path, t.headers, seconds, connections, t.pinned, what)
            r["proxy_cpu_s"] = tree_cpu_seconds(t.proxy.pid) - cpu0 if t.proxy else None
            return r
        finally:
            if widen:
                set_affinity_tree(self.upstream.pid, {LOAD_CPU})

    def live(self) -> list[Target]:
        return [t for t in self.targets if not t.failed]

    def fail(self, t: Target, e: Exception) -> None:
        log(f"case {t.key} FAILED: {e}")
        t.failed = str(e)
        self.failures.append(f"case {t.key}: {e}")
        self.stop_target(t)

    def run_rounds(self) -> None:
        a = self.args
        if a.warmup > 0:
            for t in self.live():
                try:
                    self.wrk_once(t, max(a.connections), a.warmup, f"wrk warm-up (case {t.key})")
                except CASE_ERRORS as e:
                    self.fail(t, e)
        for rnd in range(a.rounds):
            for conns in a.connections:
                log(f"round {rnd + 1}/{a.rounds}, {conns} connections")
                for t in self.live():
                    try:
                        r = self.wrk_once(t, conns, a.duration, f"wrk, every round (case {t.key}, c{conns})")
                    except CASE_ERRORS as e:
                        self.fail(t, e)
                        continue
                    r["round"] = rnd
                    t.runs.setdefault(conns, []).append(r)
                    cpu = f", proxy CPU {r['proxy_cpu_s'] / a.duration:.0%}" if r["proxy_cpu_s"] is not None else ""
                    log(f"  {t.key:5} {r['rps']:9,.0f} req/s, p50 {fmt_ms(r['p50'])}, p99 {fmt_ms(r['p99'])}, "
                        f"non-2xx {r['non2xx']}, socket errors {r['socket_errors']}{cpu}")
        for t in self.live():
            runs = [r for rs in t.runs.values() for r in rs]
            t.info["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in runs)
            if t.info["errors"]:
                self.notes.append(f"case {t.key}: {t.info['errors']} non-2xx responses or socket errors in the rounds")
            if t.proxy:
                t.info["hwm_kib"] = tree_kib(t.proxy.pid, "VmHWM")
                t.info["processes"] = len(process_tree(t.proxy.pid))
            if "redis_port" in t.info:
                stats = run_text(["redis-cli", "-p", str(t.info["redis_port"]), "info", "commandstats"])
                t.info["redis_calls"] = sum(int(m) for m in re.findall(r"cmdstat_(?:evalsha|eval):calls=(\d+)", stats))
                t.info["redis_served"] = sum(r["requests"] for r in runs)

    def target(self, key: str) -> Target | None:
        return next((t for t in self.live() if t.key == key), None)

    def run_open_loop(self) -> None:
        """oha at one fixed rate against bare Pingora and tollgate + API key + Redis."""
        a = self.args
        if a.open_loop_seconds <= 0:
            return
        wanted = [t for t in (self.target("p"), self.target("e")) if t]
        if not wanted:
            return
        if not shutil.which("oha"):
            self.notes.append("open loop skipped: oha is not on PATH (`scripts/ensure-deps.sh bench` installs it)")
            return
        # One rate for every case, below what the slowest of them serves closed loop, so each
        # latency is measured short of saturation (half of p's rate would overload e).
        base_conns = min(a.connections)
        measured = [t for t in wanted if t.runs.get(base_conns)]
        if len(measured) < len(wanted):
            self.notes.append("open loop skipped: it needs the closed-loop rate of every open-loop case")
            return
        slowest = min(statistics.median(r["rps"] for r in t.runs[base_conns]) for t in measured)
        self.open_loop_rate = max(1, int(a.open_loop_share * slowest))
        for t in wanted:
            log(f"open loop: {t.key} at {self.open_loop_rate:,} req/s for {a.open_loop_seconds:g} s")
            try:
                r = self.load.oha(t.port, t.path, t.headers, self.open_loop_rate, a.open_loop_seconds,
                                  a.open_loop_connections, f"oha, open loop (case {t.key})")
            except CASE_ERRORS as e:
                self.failures.append(f"open loop {t.key}: {e}")
                continue
            r["key"], r["label"] = t.key, t.label
            lat = r["latency_ms"]
            log(f"  {t.key}: {r['rps']:,.0f} req/s, p50 {fmt_ms(lat['p50'])}, p99 {fmt_ms(lat['p99'])}, "
                f"p99.9 {fmt_ms(lat['p99.9'])}, non-2xx {r['non2xx']}, errors {r['errors']}")
            self.open_loop.append(r)

    def stop_targets(self) -> None:
        for t in self.targets:
            self.stop_target(t)

    # --- idle connections
    def idle_connections(self) -> None:
        self.idle: list[dict] = []
        for n in self.args.idle:
            try:
                self.idle.append(self.idle_once(n))
            except BenchError as e:
                log(f"idle connections ({n}) FAILED: {e}")
                self.failures.append(f"idle {n}: {e}")

    def idle_once(self, n: int) -> dict:
        port = free_port()
        name = f"tollgate-idle-{n}"
        proxy = self.start_tollgate(name, tollgate_yaml(self.run_dir, name, port, self.upstream_port), port, PROXY_CPU)
        try:
            for _ in range(20):
                probe(port)
            time.sleep(0.5)
            base = proc_status_kib(proxy.pid, "VmRSS")
            log(f"idle: opening {n} keep-alive connections (one request each) to tollgate (VmRSS now {base} KiB)")
            self.h.note(f"idle connections: bench.py's asyncio client opens {n} connections to the tollgate above, "
                        "sends one GET / on each, reads the answer and holds them open")
            opened, held, rss, fds, hwm = asyncio.run(hold_connections(port, n, proxy.pid))
            if opened < n:
                raise BenchError(f"only {opened} of {n} connections got a 200")
            return {"n": n, "base_kib": base, "rss_kib": rss, "hwm_kib": hwm, "fds": fds, "held": held}
        finally:
            self.h.stop(proxy, signal.SIGINT)

    # --- criterion
    def criterion(self) -> None:
        self.criterion_rows: list[tuple[str, str]] = []
        self.criterion_cmd = None
        if not self.args.criterion:
            return
        # The profile of the binaries under test: its dependencies are built already.
        argv = ["cargo", "bench", "--profile", self.args.profile, "--bench", "hot_path", "--",
                "--warm-up-time", str(self.args.criterion_warmup), "--measurement-time", str(self.args.criterion_time)]
        self.criterion_cmd = shlex.join(argv)
        self.h.record("criterion micro-benchmarks", argv)
        log(f"criterion: {self.criterion_cmd}")
        # stderr (compilation, criterion's progress) goes to the terminal; results are on stdout.
        r = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=3600,
                           env=dict(os.environ, CARGO_TARGET_DIR=self.args.target_dir))
        (self.run_dir / "criterion.log").write_text(r.stdout)
        if r.returncode != 0:
            self.failures.append(f"cargo bench failed ({r.returncode}):\n{r.stdout[-2000:]}")
            return
        name = None
        for line in r.stdout.splitlines():
            if line and not line[0].isspace() and len(line.split()) == 1:
                name = line.strip()  # a benchmark's name on its own line
            t = re.search(r"time:\s+\[([\d.]+ \S+) ([\d.]+ \S+) ([\d.]+ \S+)\]", line)
            if t:
                if not line.startswith(" "):
                    name = line.split()[0]
                self.criterion_rows.append((name or "?", f"{t.group(2)} ({t.group(1)} – {t.group(3)})"))



async def hold_connections(port: int, n: int, pid: int) -> tuple[int, int, int, int, int]:
    conns = []
    sem = asyncio.Semaphore(200)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> bool:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            conns.append((reader, writer))
            return head.startswith(b"HTTP/1.1 200")

    try:
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise BenchError(f"{len(errors)} of {n} connections failed, e.g. {errors[0]!r}")
        await asyncio.sleep(2)
        rss = proc_status_kib(pid, "VmRSS")
        hwm = proc_status_kib(pid, "VmHWM")
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = -1
        held = sum(1 for r, _ in conns if not r.at_eof())
        return sum(1 for r in results if r is True), held, rss, fds, hwm
    finally:
        for _, w in conns:
            w.close()


# ----------------------------------------------------------------------------- report

def machine() -> dict[str, str]:
    model = re.search(r"^Model name:\s*(.+)$", run_text(["lscpu"]), re.M)
    commit = run_text(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    dirty = run_text(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": run_text(["nproc"]),
        "cpu": model.group(1).strip() if model else "?",
        "kernel": run_text(["uname", "-r"]),
        "memory": f"{proc_meminfo_gib():.1f} GiB",
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "wrk": run_text(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "?",
        "oha": run_text(["oha", "--version"]) if shutil.which("oha") else "oha: not installed",
        "nginx": run_text(["nginx", "-v"]),
        "redis": run_text(["redis-server", "--version"]),
        "rustc": run_text(["rustc", "--version"]),
        "python": sys.version.split()[0],
    }


def proc_meminfo_gib() -> float:
    m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(m.group(1)) / 2**20 if m else 0.0


class CpuAccount:
    """CPU time used on the whole machine versus by this script and its children, between
    start() and stop(): what is left is other processes' load, i.e. noise."""

    @staticmethod
    def machine_busy_seconds() -> float:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / CLOCK_TICKS

    @staticmethod
    def own_seconds() -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            u = resource.getrusage(who)
            total += u.ru_utime + u.ru_stime
        return total

    def start(self) -> None:
        self.t0, self.m0, self.o0 = time.monotonic(), self.machine_busy_seconds(), self.own_seconds()

    def stop(self) -> tuple[float, float]:
        """(other processes' CPU seconds, their share of the machine). Call after every child
        has been reaped (its time counts only then)."""
        wall = time.monotonic() - self.t0
        other = max(0.0, (self.machine_busy_seconds() - self.m0) - (self.own_seconds() - self.o0))
        return other, other / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


def machine_busy_share(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over a short sample (before anything is started)."""
    b0, t0 = CpuAccount.machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (CpuAccount.machine_busy_seconds() - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])




def median_of(runs: list[dict], field: str) -> float | None:
    vals = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(vals) if vals else None


def per_round_ratio(num: list[dict], den: list[dict]) -> float | None:
    """Median over the rounds of num's req/s over den's in the same round."""
    by_round = {r["round"]: r["rps"] for r in den}
    vals = [r["rps"] / by_round[r["round"]] for r in num if by_round.get(r["round"])]
    return statistics.median(vals) if vals else None


def fmt_ratio(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "—"


def report(b: Bench, args: argparse.Namespace, mach: dict[str, str], load_before: str, load_after: str,
           started: float, idle_share: float, other: tuple[float, float] | None) -> str:
    conns = args.connections
    ref = next((t for t in b.targets if t.key == "p" and t.runs), None)
    rows = []
    for t in b.targets:
        if not t.runs:
            continue
        cells = [t.key, t.label]
        for c in conns:
            runs = t.runs.get(c, [])
            rps = [r["rps"] for r in runs]
            if not rps:
                cells += ["—"] * 4
                continue
            m = statistics.median(rps)
            spread = f"{(max(rps) - min(rps)) / m:.0%}" if len(rps) > 1 else "—"
            ratio = per_round_ratio(runs, ref.runs.get(c, [])) if ref else None
            cells += [f"{m:,.0f}", spread, fmt_ms(median_of(runs, "p99")), fmt_ratio(ratio)]
        if len(conns) > 1:
            cells.append(fmt_ratio(per_round_ratio(t.runs.get(conns[-1], []), t.runs.get(conns[0], []))))
        first = t.runs.get(conns[0], [])
        cpu_s = sum(r["proxy_cpu_s"] or 0 for r in first)
        served = sum(r["requests"] for r in first)
        cells.append(f"{cpu_s / served * 1e6:.0f} µs ({cpu_s / (len(first) * args.duration):.0%})"
                     if t.proxy and first and served else "—")
        rss = f"{t.info['hwm_kib'] / 1024:.1f} MiB" if t.info.get("hwm_kib") else "—"
        if t.info.get("processes", 0) > 1:
            rss += f" ({t.info['processes']} processes)"
        cells += [rss, str(t.info.get("errors", "—"))]
        rows.append("| " + " | ".join(cells) + " |")

    busy = other[1] > BUSY_SHARE if other is not None else idle_share > BUSY_SHARE
    noise = (f"other processes used {other[0]:.0f} CPU-seconds, {other[1]:.0%} of the machine, during the "
             "load tests" if other else "the load tests did not complete")
    out = [
        "# tollgate benchmark results",
        "",
        f"Written by `make bench` (loadtest/bench.py) on {mach['date']}; the run took "
        f"{(time.monotonic() - started) / 60:.1f} minutes.",
        "",
    ]
    if args.quick:
        out += ["> **Quick trial run (`--quick`)**: short runs; the numbers only show that the harness works.", ""]
    if busy:
        out += [f"> **The machine was busy** ({noise}; {idle_share:.0%} of the CPUs were busy before the start): "
                "the numbers are noisy. Re-run `make bench` on a quiet machine for figures to keep.", ""]
    profiles = f"`{args.profile}`" + "".join(f", `{p}` (rows @{p})" for p in args.compare_profiles)
    profiles += "".join(f", the binary `{path}` (rows @{label})" for label, path in args.compare_binaries)
    out += [
        "## Machine",
        "",
        f"- CPUs (`nproc`): {mach['nproc']}; model: {mach['cpu']}; memory: {mach['memory']}",
        f"- kernel: {mach['kernel']}",
        f"- tollgate commit: {mach['commit']}",
        f"- build profile: {profiles}; tollgate and bare Pingora (`examples/bare_pingora.rs`) are built with the "
        f"same profile (`{args.profile}`, see Cargo.toml)",
        f"- {mach['rustc']}; {mach['nginx']}; {mach['wrk']}; {mach['oha']}; {mach['redis'].split(' sha=')[0]}; "
        f"Python {mach['python']}",
        f"- other load: {idle_share:.0%} of the CPUs busy in a 2 s sample before the run; {noise}; "
        f"load average (1, 5, 15 min) {load_before} at the start, {load_after} at the end",
        "",
        "## Throughput and latency (closed loop)",
        "",
        f"wrk, 1 thread, keep-alive connections ({' and '.join(f'c{c}' for c in conns)}), GET of a 2-byte body. "
        f"Every server is started once; after a {args.warmup:g} s warm-up each, the cases run in "
        f"{args.rounds} interleaved rounds (every case once at each concurrency, then every case again), "
        f"{args.duration:g} s per run. req/s is the median over the rounds; spread is (max − min) / median; "
        "p99 is wrk's (median over the rounds). **× bare Pingora** is the median of the per-round ratios to "
        "case p in the same round at the same concurrency"
        + (f"; c{conns[-1]} / c{conns[0]} likewise compares a case with itself" if len(conns) > 1 else "") + ". "
        + ("Every proxy runs on CPU 0; wrk, the upstream and Redis on CPU 1 (`taskset`), except in t2 and n2, "
           "where nothing is pinned (report only: compare t2 with n2). " if b.h.pin
           else "**Nothing was pinned** (fewer than 2 CPUs). ")
        + "tollgate: `server.threads: 1` (t2: 2), `access_log: false` (l: on, stdout to a file). "
        f"Proxy CPU (at c{conns[0]}): CPU time (user + system) of the proxy's processes per request, and as a "
        "share of one core (100% = the proxy was the bottleneck); less sensitive than req/s to other load on "
        "the machine. Peak RSS is VmHWM (nginx: master + workers). Errors: non-2xx responses plus socket "
        "errors in all rounds (must be 0).",
        "",
        "| case | what | " + " | ".join(f"c{c} req/s | spread | p99 | × bare Pingora" for c in conns)
        + (f" | c{conns[-1]} / c{conns[0]}" if len(conns) > 1 else "") + " | proxy CPU / req | peak RSS | errors |",
        "| --- | --- | " + " | ".join("---: | ---: | ---: | ---:" for _ in conns)
        + (" | ---:" if len(conns) > 1 else "") + " | ---: | ---: | ---: |",
        *rows,
        "",
    ]
    details = []
    by_key = {t.key: t for t in b.targets if t.runs}
    if "t2" in by_key and "n2" in by_key:
        details.append("- t2 / n2 (tollgate with 2 threads over nginx with 2 workers, nothing pinned), per-round: "
                       + ", ".join(f"c{c} {fmt_ratio(per_round_ratio(by_key['t2'].runs.get(c, []), by_key['n2'].runs.get(c, [])))}"
                                   for c in conns))
    for prof in args.compare_profiles + [label for label, _ in args.compare_binaries]:
        for key in PROFILE_CASES:
            if f"{key}@{prof}" in by_key and key in by_key:
                details.append(f"- {key}@{prof} / {key} (`{prof}` over this build), per-round: "
                               + ", ".join(f"c{c} {fmt_ratio(per_round_ratio(by_key[key + '@' + prof].runs.get(c, []), by_key[key].runs.get(c, [])))}"
                                           for c in conns))
    for t in b.targets:
        if t.info.get("redis_calls") is not None:
            per_call = t.info["redis_served"] / max(1, t.info["redis_calls"])
            details.append(f"- {t.key}: Redis script calls {t.info['redis_calls']:,} (warm-up and probes included) "
                           f"for {t.info['redis_served']:,} measured requests: about {per_call:.1f} requests "
                           "decided per coalesced call")
    if "h" in by_key:
        h = by_key["h"]
        details.append(f"- h: config file {h.info.get('config_mib', 0):.1f} MiB; tollgate started (listening) "
                       f"{h.info.get('startup_s') or 0:.1f} s after launch; the request goes to a route in the middle "
                       "of the list with one of the keys (cached after the first request), like d.")
    details += [
        "- d–h verify the credential on every request (API key: HMAC-SHA-256 then the credential cache; JWT: "
        "the verified-token cache, so the signature itself is checked once — see the criterion figures for its "
        "cost). In e Redis decides every request; the decisions waiting on a worker at the same moment "
        "share one script call (`failure_mode: closed`, so a Redis problem would show as errors, not as a "
        "silent fallback).",
    ]
    out += ["Notes:", "", *details, ""]
    out += ["<details><summary>Every measured run</summary>", "",
            "| case | connections | round | req/s | p50 | p99 | requests | non-2xx | socket errors | proxy CPU / req |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in b.targets:
        for c in conns:
            for r in t.runs.get(c, []):
                cpu = (f"{r['proxy_cpu_s'] / r['requests'] * 1e6:.0f} µs"
                       if r.get("proxy_cpu_s") is not None and r["requests"] else "—")
                out.append(f"| {t.key} | {c} | {r['round'] + 1} | {r['rps']:,.0f} | {fmt_ms(r['p50'])} | "
                           f"{fmt_ms(r['p99'])} | {r['requests']:,} | {r['non2xx']} | {r['socket_errors']} | {cpu} |")
    out += ["", "</details>", ""]

    if b.open_loop:
        out += [
            "## Open loop (fixed arrival rate)",
            "",
            f"oha, {args.open_loop_connections} keep-alive connections, {args.open_loop_seconds:g} s per case, "
            f"requests sent at a fixed {b.open_loop_rate:,} req/s ({args.open_loop_share:.0%} of the slowest "
            f"open-loop case's c{conns[0]} median above) whether or not earlier ones were answered; `--latency-correction` counts each "
            "latency from when its request was due, so a stall shows in the percentiles instead of being "
            "hidden by coordinated omission. The server under test on CPU 0, oha on CPU 1.",
            "",
            "| case | what | rate asked | rate achieved | p50 | p90 | p99 | p99.9 | p99.99 | max | non-2xx | errors |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in b.open_loop:
            lat = r["latency_ms"]
            out.append(f"| {r['key']} | {r['label']} | {b.open_loop_rate:,} | {r['rps']:,.0f} | "
                       + " | ".join(fmt_ms(lat[p]) for p in OHA_PERCENTILES)
                       + f" | {fmt_ms(r['max_ms'])} | {r['non2xx']} | {r['errors']} |")
        out.append("")

    if getattr(b, "idle", None):
        out += [
            "## Memory with idle keep-alive connections",
            "",
            "tollgate (plain proxy, `threads: 1`): N client connections opened, one `GET /` answered on each, "
            "then all held open; VmRSS read 2 s later. Baseline: the same process before, after 20 requests. "
            "The open-file soft limit was raised to the hard limit for this (`ulimit -n $(ulimit -Hn)`).",
            "",
            "| idle connections | VmRSS baseline | VmRSS with them open | per connection | VmHWM | open fds | still open at measurement |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for i in b.idle:
            per = (i["rss_kib"] - i["base_kib"]) / i["n"]
            out.append(f"| {i['n']:,} | {i['base_kib'] / 1024:.1f} MiB | {i['rss_kib'] / 1024:.1f} MiB | "
                       f"{per:.1f} KiB | {i['hwm_kib'] / 1024:.1f} MiB | {i['fds']:,} | {i['held']:,} |")
        out.append("")

    if args.criterion:
        out += ["## Micro-benchmarks (criterion)", "", f"`{b.criterion_cmd}` (median, with criterion's interval):", ""]
        if b.criterion_rows:
            out += ["| benchmark | time |", "| --- | ---: |"]
            out += [f"| {n} | {t} |" for n, t in b.criterion_rows]
        else:
            out.append("(no results: see the failures below)")
        out.append("")

    if b.notes or b.failures:
        out += ["## Problems", ""]
        out += [f"- {n}" for n in b.notes]
        out += [f"- FAILED {f.splitlines()[0]}" + ("\n\n  ```\n  " + "\n  ".join(f.splitlines()[1:][:30]) + "\n  ```"
                                                   if len(f.splitlines()) > 1 else "") for f in b.failures]
        out.append("")

    builds = [f"cargo build --profile {args.profile} --bin tollgate --example bare_pingora"]
    builds += [f"cargo build --profile {p} --bin tollgate" for p in args.compare_profiles]
    builds += [f"# @{label}: {path}, built beforehand" for label, path in args.compare_binaries]
    out += ["## Commands", "", "Placeholders: `$RUN` is the run's temp dir; `$PEPPER` the random pepper; `$API_KEY`, "
            "`$API_KEY_H`, `$JWT_RS256`, `$JWT_ES256` are the throw-away credentials the run generated; ports were "
            "free loopback ports.", "", "```sh",
            f"# this run: {shlex.join(['python3', 'loadtest/bench.py'] + sys.argv[1:])}",
            "# the binaries it measured (`make bench` builds them):", *builds,
            f"ulimit -n $(ulimit -Hn)   # {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"]
    for what, line in b.h.commands:
        out.append(f"# {what}")
        if line:
            out.append(line.replace(str(b.run_dir), "$RUN"))
    out += ["```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main

def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run (10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds: every case once per round (3)")
    p.add_argument("--warmup", type=float, default=3, help="warm-up seconds per case, before the first round (3)")
    p.add_argument("--connections", type=int_list, default=[64, 256],
                   help="wrk connection counts, each measured in every round (64,256)")
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"which cases ({DEFAULT_CASES})")
    p.add_argument("--routes", type=int, default=1000, help="routes in case h (1000)")
    p.add_argument("--keys", type=int, default=100_000, help="API keys in case h (100000)")
    p.add_argument("--idle", type=int_list, default=[1000, 10000],
                   help="idle-connection counts to measure ('' to skip) (1000,10000)")
    p.add_argument("--open-loop-share", type=float, default=0.5,
                   help="open-loop rate as a share of the slowest open-loop case's closed-loop req/s at the first --connections (0.5)")
    p.add_argument("--open-loop-seconds", type=float, default=30, help="open-loop run per case; 0 skips it (30)")
    p.add_argument("--open-loop-connections", type=int, default=64, help="oha connections in the open loop (64)")
    p.add_argument("--profile", default="dist",
                   help="cargo profile tollgate and bare Pingora were built with (dist: `make bench` builds it)")
    p.add_argument("--compare-profiles", default="",
                   help="more profiles (e.g. release) whose tollgate runs cases c and d too, built beforehand "
                   "with `cargo build --profile P` ('')")
    p.add_argument("--compare-binaries", default="",
                   help="LABEL=PATH,...: other tollgate binaries (e.g. an earlier commit's) that run cases c, d and e "
                   "too, as rows c@LABEL, d@LABEL, e@LABEL ('')")
    p.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target"),
                   help="cargo's target dir ($CARGO_TARGET_DIR, else ./target)")
    p.add_argument("--no-criterion", dest="criterion", action="store_false", help="skip cargo bench --bench hot_path")
    p.add_argument("--criterion-warmup", type=int, default=1, help="criterion --warm-up-time seconds (1)")
    p.add_argument("--criterion-time", type=int, default=3, help="criterion --measurement-time seconds (3)")
    p.add_argument("--quick", action="store_true",
                   help="a short trial: 1 s warm-up, 2 rounds of 3 s runs, 5 s open loop, shorter criterion")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--keep", action="store_true", help="keep the run's temp dir (configs, logs)")
    a = p.parse_args()
    if a.quick:
        a.duration, a.rounds, a.warmup, a.open_loop_seconds = 3, 2, 1, min(a.open_loop_seconds, 5)
        a.criterion_warmup, a.criterion_time = 1, 1
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in a.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; known: {DEFAULT_CASES}")
    a.compare_profiles = [x.strip() for x in a.compare_profiles.split(",") if x.strip() and x.strip() != a.profile]
    a.compare_binaries = [tuple(x.strip().split("=", 1)) for x in a.compare_binaries.split(",") if x.strip()]
    if any(len(x) != 2 or not x[0] or not x[1] for x in a.compare_binaries):
        p.error("--compare-binaries takes LABEL=PATH pairs")
    if not a.connections or a.rounds < 1:
        p.error("--connections needs at least one count and --rounds at least 1")
    return a


def preflight(args: argparse.Namespace, b: Bench) -> None:
    missing = [t for t in ("wrk", "nginx", "redis-server", "redis-cli", "openssl", "taskset") if not shutil.which(t)]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (run scripts/ensure-deps.sh bench)")
    if args.criterion and not shutil.which("cargo"):
        raise BenchError("cargo is not on PATH (or pass --no-criterion)")
    needed = [(b.binary, f"cargo build --profile {args.profile} --bin tollgate")]
    if "p" in args.cases:
        needed.append((b.bare_binary, f"cargo build --profile {args.profile} --example bare_pingora"))
    needed += [(path, f"cargo build --profile {p} --bin tollgate") for p, path in b.profile_binaries.items()]
    for path, build in needed:
        if not path.is_file():
            raise BenchError(f"{path} does not exist: run `{build}` first (`make bench` builds the {args.profile} ones)")


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    # Many connections: raise the soft open-file limit to the hard one (inherited by every child).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(args.idle or [0]) + 100 > hard:
        log(f"warning: the open-file hard limit ({hard}) is below the idle-connection count; expect failures")

    pin = (os.cpu_count() or 1) >= 2
    if not pin:
        log("fewer than 2 CPUs: nothing will be pinned")
    clean_stale_runs()
    run_dir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    os.chmod(run_dir, 0o755)  # nginx workers may run as another user
    (run_dir / "harness.pid").write_text(str(os.getpid()))
    h = Harness(run_dir, pin)
    bench = Bench(args, h)
    try:
        preflight(args, bench)
    except BenchError as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        log(str(e))
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    mach = machine()
    load_before = loadavg()
    idle_share = machine_busy_share()
    if idle_share > BUSY_SHARE:
        log(f"warning: the machine is busy ({idle_share:.0%} of the CPUs in use before starting); "
            "the numbers will be noisy")
    log(f"run dir {run_dir}; results to {args.out}")
    account = CpuAccount()
    other = None
    code = 0
    try:
        account.start()
        bench.start_upstream()
        bench.setup_all()
        bench.run_rounds()
        bench.run_open_loop()
        bench.stop_targets()
        bench.idle_connections()
        h.stop_all()
        other = account.stop()
        log(f"other processes used {other[1]:.0%} of the machine during the load tests")
        bench.criterion()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping everything")
        h.stop_all()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 130
    except BenchError as e:
        bench.failures.append(str(e))
        code = 1
    finally:
        h.stop_all()
    load_after = loadavg()
    text = report(bench, args, mach, load_before, load_after, started, idle_share, other)
    Path(args.out).write_text(text)
    if args.keep:
        log(f"kept {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(text)
    if bench.failures:
        log(f"{len(bench.failures)} failure(s):")
        for f in bench.failures:
            log("  " + f.splitlines()[0])
        code = 1
    log(f"results written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
