#!/usr/bin/env python3
"""`make bench`: tollgate against nginx on this machine, in one run.

Cases (each: a warm-up, then REPEATS measured wrk runs of DURATION; median and spread):
  a  the upstream directly (nginx, 1 worker, 2-byte body)
  b  nginx as a reverse proxy (1 worker, keep-alive to the upstream)
  c  tollgate, plain proxy
  c* tollgate, plain proxy, nothing pinned (reference)
  d  tollgate + API-key auth
  e  tollgate + API key + Redis rate limiting (a quota that never refuses)
  f  tollgate + JWT RS256 + Redis rate limiting
  g  tollgate + JWT ES256 + Redis rate limiting
  h  tollgate + API key, with 1,000 routes and 100,000 keys configured
plus tollgate's memory with 1,000 and 10,000 idle keep-alive client connections, and the
criterion micro-benchmarks (cargo bench --bench hot_path) at the end.

Load: wrk, 1 thread, 64 keep-alive connections. The proxy under test runs on CPU 0; wrk,
the upstream and Redis on CPU 1 (taskset). tollgate: server.threads 1, no access log.
Results go to loadtest/RESULTS.md (or --out) with the machine and the exact commands.

Needs: target/release/tollgate (built by `make bench`), wrk, nginx, redis-server, redis-cli,
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


# ----------------------------------------------------------------------------- wrk

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


class Load:
    def __init__(self, harness: Harness, args: argparse.Namespace):
        self.h = harness
        self.args = args

    def wrk_argv(self, port: int, path: str, headers: dict[str, str], seconds: float) -> list[str]:
        argv = ["wrk", "-t", "1", "-c", str(self.args.connections), "-d", f"{seconds:g}s", "--timeout", "5s", "--latency"]
        for k, v in headers.items():
            argv += ["-H", f"{k}: {v}"]
        return argv + [f"http://127.0.0.1:{port}{path}"]

    def run(self, port: int, path: str, headers: dict[str, str], seconds: float, pinned: bool, what: str) -> dict:
        argv = self.wrk_argv(port, path, headers, seconds)
        argv = self.h.pinned(argv, LOAD_CPU if pinned else None)
        self.h.record(what, argv)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=_child_setup)
        if r.returncode != 0:
            raise BenchError(f"wrk failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return parse_wrk(r.stdout)

    def measure(self, port: int, path: str, headers: dict[str, str], pinned: bool, label: str,
                proxy_pid: int | None) -> list[dict]:
        """Warm-up, then the measured runs; each run also gets the CPU seconds the proxy's
        processes used during it."""
        a = self.args
        if a.warmup > 0:
            self.run(port, path, headers, a.warmup, pinned, f"wrk warm-up ({label})")
        runs = []
        for i in range(a.repeats):
            cpu0 = tree_cpu_seconds(proxy_pid) if proxy_pid else None
            r = self.run(port, path, headers, a.duration, pinned, f"wrk, measured x{a.repeats} ({label})")
            r["proxy_cpu_s"] = tree_cpu_seconds(proxy_pid) - cpu0 if proxy_pid else None
            cpu = f", proxy CPU {r['proxy_cpu_s'] / a.duration:.0%}" if proxy_pid else ""
            log(f"  {label} run {i + 1}/{a.repeats}: {r['rps']:.0f} req/s, p50 {fmt_ms(r['p50'])}, "
                f"p99 {fmt_ms(r['p99'])}, non-2xx {r['non2xx']}, socket errors {r['socket_errors']}{cpu}")
            runs.append(r)
        return runs


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
                  consumers_yaml: str = "") -> str:
    y = [
        "# Generated by loadtest/bench.py",
        "server:",
        "  threads: 1",
        "  access_log: false",
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
    elif key_hash_hex:
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

class Bench:
    def __init__(self, args: argparse.Namespace, h: Harness):
        self.args = args
        self.h = h
        self.load = Load(h, args)
        self.run_dir = h.run_dir
        self.binary = Path(args.binary).resolve()
        self.pepper = "bench-pepper-" + os.urandom(12).hex()
        self.rng = random.Random(6)
        self.key = api_key(self.rng)
        h.masks[self.key] = "$API_KEY"
        self.results: dict[str, dict] = {}
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.upstream_port = free_port()
        self.upstream: Proc | None = None

    # --- servers
    def render(self, template: str, out_name: str, **vars) -> Path:
        text = (HERE / template).read_text()
        for k, v in dict(vars, RUN_DIR=str(self.run_dir)).items():
            text = text.replace("{{" + k + "}}", str(v))
        if "{{" in text:
            raise BenchError(f"{template}: unreplaced placeholder")
        out = self.run_dir / out_name
        out.write_text(text)
        for tmp in ("nginx-upstream-tmp", "nginx-proxy-tmp"):
            (self.run_dir / tmp).mkdir(exist_ok=True)
        return out

    def start_nginx(self, name: str, conf: Path, port: int, cpu: int) -> Proc:
        proc = self.h.start(name, ["nginx", "-e", str(self.run_dir / f"{name}.error.log"), "-c", str(conf)], cpu,
                            what=f"{name} (config rendered from loadtest/{conf.name})")
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

    def start_tollgate(self, name: str, yaml: str, port: int, cpu: int | None) -> Proc:
        conf = self.run_dir / f"{name}.yaml"
        conf.write_text(yaml)
        env = {PEPPER_ENV: self.pepper}
        shown_env = {PEPPER_ENV: "$PEPPER"}
        argv = [str(self.binary), "-c", str(conf)]
        check = subprocess.run(argv[:1] + ["check"] + argv[1:], capture_output=True, text=True,
                               env=dict(os.environ, **env), timeout=300)
        if check.returncode != 0:
            raise BenchError(f"tollgate check {conf} failed:\n{check.stdout}{check.stderr}")
        started = time.monotonic()
        proc = self.h.start(name, argv, cpu, env=env, shown_env=shown_env, what=f"tollgate ({name})")
        wait_port(port, proc, timeout=120)
        proc.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        return proc

    # --- one case
    def case(self, key: str, label: str, port: int, path: str, headers: dict[str, str], proxy: Proc | None,
             pinned: bool = True) -> None:
        log(f"case {key}: {label}")
        runs = self.load.measure(port, path, headers, pinned, f"case {key}", proxy.pid if proxy else None)
        res = {"label": label, "runs": runs,
               "hwm_kib": tree_kib(proxy.pid, "VmHWM") if proxy else None,
               "processes": len(process_tree(proxy.pid)) if proxy else 0,
               "errors": sum(r["non2xx"] + r["socket_errors"] for r in runs)}
        if res["errors"]:
            self.notes.append(f"case {key}: {res['errors']} non-2xx responses or socket errors during the measured runs")
        self.results[key] = res

    def guarded(self, key: str, fn) -> None:
        try:
            fn()
        except BenchError as e:
            log(f"case {key} FAILED: {e}")
            self.failures.append(f"case {key}: {e}")

    # --- the cases
    def case_direct(self) -> None:
        self.case("a", "upstream directly (nginx, 2-byte body)", self.upstream_port, "/", {}, None)

    def case_nginx_proxy(self) -> None:
        port = free_port()
        conf = self.render("nginx-proxy.conf", "nginx-proxy.conf", PROXY_PORT=port, UPSTREAM_PORT=self.upstream_port)
        proxy = self.start_nginx("nginx-proxy", conf, port, PROXY_CPU)
        try:
            status, hdrs, body = probe(port)
            expect(status == 200 and body == b"ok", "nginx proxy answers 200 \"ok\"", status, hdrs, body)
            self.case("b", "nginx reverse proxy (1 worker, keep-alive upstream)", port, "/", {}, proxy)
        finally:
            self.h.stop(proxy)

    def tollgate_case(self, key: str, label: str, yaml_fn, headers: dict[str, str], *, path: str = "/",
                      pinned: bool = True, anonymous_status: int = 200, limited: bool = False, redis: bool = False,
                      name: str | None = None) -> None:
        redis_proc, redis_port = (self.start_redis() if redis else (None, None))
        port = free_port()
        name = name or f"tollgate-{key}"
        proxy = None
        try:
            proxy = self.start_tollgate(name, yaml_fn(port, redis_port), port, PROXY_CPU if pinned else None)
            status, hdrs, body = probe(port, path, headers)
            expect(status == 200 and body == b"ok", f"{label}: 200 \"ok\" with the credential", status, hdrs, body)
            expect("x-request-id" in hdrs, f"{label}: X-Request-Id returned", status, hdrs, body)
            if limited:
                expect("ratelimit" in hdrs and "ratelimit-policy" in hdrs, f"{label}: RateLimit headers", status, hdrs, body)
            status, hdrs, body = probe(port, path)
            expect(status == anonymous_status, f"{label}: {anonymous_status} without a credential", status, hdrs, body)
            widen = not pinned and self.h.pin
            if widen:
                set_affinity_tree(self.upstream.pid, set(range(os.cpu_count() or 1)))
            try:
                self.case(key, label, port, path, headers, proxy, pinned=pinned)
            finally:
                if widen:
                    set_affinity_tree(self.upstream.pid, {LOAD_CPU})
            self.results[key]["startup_s"] = getattr(proxy, "startup_seconds", None)
            if redis_port:
                stats = run_text(["redis-cli", "-p", str(redis_port), "info", "commandstats"])
                calls = sum(int(m) for m in re.findall(r"cmdstat_(?:evalsha|eval):calls=(\d+)", stats))
                served = sum(r["requests"] for r in self.results[key]["runs"])
                self.results[key]["redis_calls"] = calls
                if calls < served:
                    self.notes.append(f"case {key}: Redis saw {calls} script calls for {served}+ requests")
        finally:
            if proxy:
                self.h.stop(proxy, signal.SIGINT)
            if redis_proc:
                self.h.stop(redis_proc)

    def run_cases(self) -> None:
        a = self.args
        up = self.upstream_port
        key_hdr = {"x-api-key": self.key}
        khash = key_hash(self.pepper, self.key)
        want = set(a.cases)

        if "a" in want:
            self.guarded("a", self.case_direct)
        if "b" in want:
            self.guarded("b", self.case_nginx_proxy)
        if "c" in want:
            self.guarded("c", lambda: self.tollgate_case(
                "c", "tollgate, plain proxy", lambda p, r: tollgate_yaml(self.run_dir, "tollgate-c", p, up), {}))
            self.guarded("c*", lambda: self.tollgate_case(
                "c*", "tollgate, plain proxy, unpinned (reference)",
                lambda p, r: tollgate_yaml(self.run_dir, "tollgate-c-unpinned", p, up), {}, pinned=False,
                name="tollgate-c-unpinned"))
        if "d" in want:
            self.guarded("d", lambda: self.tollgate_case(
                "d", "tollgate + API key", lambda p, r: tollgate_yaml(
                    self.run_dir, "tollgate-d", p, up, auth="api_key", key_hash_hex=khash), key_hdr,
                anonymous_status=401))
        if "e" in want:
            self.guarded("e", lambda: self.tollgate_case(
                "e", "tollgate + API key + Redis limit", lambda p, r: tollgate_yaml(
                    self.run_dir, "tollgate-e", p, up, auth="api_key", key_hash_hex=khash, redis_port=r), key_hdr,
                anonymous_status=401, limited=True, redis=True))
        for key, alg in (("f", "RS256"), ("g", "ES256")):
            if key in want:
                def jwt_case(key=key, alg=alg):
                    pub, token = make_jwt(alg, self.run_dir, self.h)
                    self.h.masks[token] = f"$JWT_{alg}"
                    self.tollgate_case(
                        key, f"tollgate + JWT {alg} + Redis limit", lambda p, r: tollgate_yaml(
                            self.run_dir, f"tollgate-{key}", p, up, auth="jwt", redis_port=r, jwt=(alg, pub)),
                        {"Authorization": f"Bearer {token}"}, anonymous_status=401, limited=True, redis=True)
                self.guarded(key, jwt_case)
        if "h" in want:
            self.guarded("h", self.case_many)

    def case_many(self) -> None:
        a = self.args
        t0 = time.monotonic()
        consumers, sample = many_keys_yaml(self.pepper, a.keys, random.Random(7))
        routes = [f"/svc{i:04d}" for i in range(a.routes)]
        path = f"{routes[len(routes) // 2]}/items"
        key = sample[len(sample) // 2]
        self.h.masks[key] = "$API_KEY_H"
        log(f"case h: generated {a.routes} routes and {a.keys} keys in {time.monotonic() - t0:.1f}s")
        self.tollgate_case(
            "h", f"tollgate + API key, {a.routes:,} routes and {a.keys:,} keys configured",
            lambda p, r: tollgate_yaml(self.run_dir, "tollgate-h", p, self.upstream_port, auth="api_key",
                                       routes=routes, consumers_yaml=consumers),
            {"x-api-key": key}, path=path, anonymous_status=401)
        size = (self.run_dir / "tollgate-h.yaml").stat().st_size
        self.results["h"]["config_mib"] = size / 2**20

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
        argv = ["cargo", "bench", "--bench", "hot_path", "--", "--warm-up-time", str(self.args.criterion_warmup),
                "--measurement-time", str(self.args.criterion_time)]
        self.criterion_cmd = shlex.join(argv)
        self.h.record("criterion micro-benchmarks", argv)
        log(f"criterion: {self.criterion_cmd}")
        # stderr (compilation, criterion's progress) goes to the terminal; results are on stdout.
        r = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=3600)
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


def report(b: Bench, args: argparse.Namespace, mach: dict[str, str], load_before: str, load_after: str,
           started: float, idle_share: float, other: tuple[float, float] | None) -> str:
    res = b.results

    def med(key: str, field: str) -> float | None:
        vals = [r[field] for r in res.get(key, {}).get("runs", []) if r[field] is not None]
        return statistics.median(vals) if vals else None

    ref_b, ref_a = med("b", "rps"), med("a", "rps")
    order = ["a", "b", "c", "c*", "d", "e", "f", "g", "h"]
    rows = []
    for key in order:
        if key not in res:
            continue
        r = res[key]
        rps = [x["rps"] for x in r["runs"]]
        m = statistics.median(rps)
        spread = f"{min(rps):,.0f} – {max(rps):,.0f}" if len(rps) > 1 else "—"
        ratio_b = f"{m / ref_b:.2f}" if ref_b else "—"
        ratio_a = f"{m / ref_a:.2f}" if ref_a else "—"
        rss = f"{r['hwm_kib'] / 1024:.1f} MiB" if r.get("hwm_kib") else "—"
        if r.get("processes", 0) > 1:
            rss += f" ({r['processes']} processes)"
        cpu_s = sum(x["proxy_cpu_s"] or 0 for x in r["runs"])
        served = sum(x["requests"] for x in r["runs"])
        cpu = (f"{cpu_s / served * 1e6:.0f} µs ({cpu_s / (len(r['runs']) * args.duration):.0%})"
               if r["runs"][0].get("proxy_cpu_s") is not None and served else "—")
        rows.append(f"| {key} | {r['label']} | {m:,.0f} | {spread} | {fmt_ms(med(key, 'p50'))} | "
                    f"{fmt_ms(med(key, 'p99'))} | {ratio_b} | {ratio_a} | {cpu} | {rss} | {r['errors']} |")

    # What ran beside the load tests decides; the sample before the start only when they did not finish.
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
    out += [
        "## Machine",
        "",
        f"- CPUs (`nproc`): {mach['nproc']}; model: {mach['cpu']}; memory: {mach['memory']}",
        f"- kernel: {mach['kernel']}",
        f"- tollgate commit: {mach['commit']}",
        f"- {mach['rustc']}; {mach['nginx']}; {mach['wrk']}; {mach['redis'].split(' sha=')[0]}; Python {mach['python']}",
        f"- other load: {idle_share:.0%} of the CPUs busy in a 2 s sample before the run; {noise}; "
        f"load average (1, 5, 15 min) {load_before} at the start, {load_after} at the end",
        "",
        "## Throughput and latency",
        "",
        f"wrk, 1 thread, {args.connections} keep-alive connections, GET of a 2-byte body; each case: "
        f"{args.warmup:g} s warm-up, then {args.repeats} × {args.duration:g} s. req/s is the median of the runs "
        "(spread: min – max); p50/p99 are wrk's latency percentiles (median over the runs). "
        + ("The proxy runs on CPU 0; wrk, the upstream and Redis on CPU 1 (`taskset`), except in c*, where "
           "nothing is pinned. " if b.h.pin else "**Nothing was pinned** (fewer than 2 CPUs). ")
        + "tollgate: `server.threads: 1`, `access_log: false`. Ratios are median req/s over that of b "
        "(nginx reverse proxy) and of a (upstream directly; with the upstream sharing CPU 1 with wrk, a is "
        "the ceiling of the load side). Peak RSS is VmHWM of the proxy's processes (nginx: master + worker). "
        "Proxy CPU: CPU time (user + system) the proxy's processes used per request during the measured "
        "runs, and as a share of one core (100% = the proxy was the bottleneck); it is less sensitive than "
        "req/s to other load on the machine. "
        "Errors: non-2xx responses plus socket errors in the measured runs (must be 0).",
        "",
        "| case | what | req/s (median) | spread | p50 | p99 | vs nginx proxy | vs direct | proxy CPU / req | peak RSS | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]
    details = []
    for key in ("e", "f", "g"):
        if res.get(key, {}).get("redis_calls") is not None:
            details.append(f"- {key}: Redis script calls {res[key]['redis_calls']:,} (one per request, "
                           "warm-up and probes included)")
    if "h" in res:
        h = res["h"]
        details.append(f"- h: config file {h.get('config_mib', 0):.1f} MiB; tollgate started (listening) "
                       f"{h.get('startup_s', 0):.1f} s after launch; the request goes to a route in the middle "
                       "of the list with one of the keys (cached after the first request), like d.")
    details += [
        "- d–h verify the credential on every request (API key: HMAC-SHA-256 then the credential cache; JWT: "
        "the verified-token cache, so the signature itself is checked once — see the criterion figures for its "
        "cost). e–g make one Redis round trip per request (`failure_mode: closed`, so a Redis problem would "
        "show as errors, not as a silent fallback).",
    ]
    out += ["Notes:", "", *details, ""]
    out += ["<details><summary>Every measured run</summary>", "", "| case | run | req/s | p50 | p99 | requests | non-2xx | socket errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key in order:
        for i, r in enumerate(res.get(key, {}).get("runs", []), 1):
            out.append(f"| {key} | {i} | {r['rps']:,.0f} | {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | {r['requests']:,} | "
                       f"{r['non2xx']} | {r['socket_errors']} |")
    out += ["", "</details>", ""]

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

    out += ["## Commands", "", "Placeholders: `$RUN` is the run's temp dir; `$PEPPER` the random pepper; `$API_KEY`, `$API_KEY_H`, `$JWT_RS256`, `$JWT_ES256` are the throw-away credentials the run generated; ports were free loopback ports.", "", "```sh",
            f"# this run: {shlex.join(['python3', 'loadtest/bench.py'] + sys.argv[1:])}",
            f"ulimit -n $(ulimit -Hn)   # {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"]
    for what, line in b.h.commands:
        out.append(f"# {what}")
        if line:
            out.append(line.replace(str(b.run_dir), "$RUN"))
    out += ["```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run (10)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per case (3)")
    p.add_argument("--warmup", type=float, default=3, help="warm-up seconds per case (3)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--cases", default="a,b,c,d,e,f,g,h", help="which cases (a,b,c,d,e,f,g,h; c includes c*)")
    p.add_argument("--routes", type=int, default=1000, help="routes in case h (1000)")
    p.add_argument("--keys", type=int, default=100_000, help="API keys in case h (100000)")
    p.add_argument("--idle", default="1000,10000", help="idle-connection counts to measure ('' to skip)")
    p.add_argument("--no-criterion", dest="criterion", action="store_false", help="skip cargo bench --bench hot_path")
    p.add_argument("--criterion-warmup", type=int, default=1, help="criterion --warm-up-time seconds (1)")
    p.add_argument("--criterion-time", type=int, default=3, help="criterion --measurement-time seconds (3)")
    p.add_argument("--quick", action="store_true", help="a short trial: 1 s warm-up, 2 × 3 s runs, shorter criterion")
    p.add_argument("--binary", default=str(ROOT / "target/release/tollgate"))
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--keep", action="store_true", help="keep the run's temp dir (configs, logs)")
    a = p.parse_args()
    if a.quick:
        a.duration, a.repeats, a.warmup = 3, 2, 1
        a.criterion_warmup, a.criterion_time = 1, 1
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    a.idle = [int(x) for x in a.idle.split(",") if x.strip()]
    return a


def preflight(args: argparse.Namespace) -> None:
    missing = [t for t in ("wrk", "nginx", "redis-server", "redis-cli", "openssl", "taskset") if not shutil.which(t)]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (run scripts/ensure-deps.sh bench)")
    if args.criterion and not shutil.which("cargo"):
        raise BenchError("cargo is not on PATH (or pass --no-criterion)")
    if not Path(args.binary).is_file():
        raise BenchError(f"{args.binary} does not exist: run `cargo build --release` first (make bench does)")


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    preflight(args)
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
    bench = Bench(args, h)
    account = CpuAccount()
    other = None
    code = 0
    try:
        account.start()
        bench.start_upstream()
        bench.run_cases()
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
