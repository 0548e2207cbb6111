#!/usr/bin/env python3
"""Several Tessera processes behaving as one, on one machine, with real processes.

Three `tessera serve` and two `tessera worker` processes over one Postgres database and one
Redis server of the test's own, behind HAProxy, with artifacts in an S3-compatible server
(moto) so that no two processes share a disk, and an OTLP receiver. Checks, in order:

  placement   a version uploaded through one process is served by the others
  aliases     an alias moved through one process is seen by all within resolve_ttl_ms
  cache       the result cache is shared
  rate limit  a tenant's limit holds across the processes together
  audit       3 x 500 concurrent audited calls leave every chain gapless and verified
  trace       one request through the load balancer is one trace: the API span, with the
              caller's traceparent as parent and Postgres and Redis spans as children
  rolling     SIGTERM each API process in turn under load: 0 failed requests
  kill -9     an API process killed under load costs only its in-flight requests; the load
              balancer routes around it
  redis       Redis killed under load: 0 failed requests, readiness degraded, not failed
  worker      a worker killed mid-training: the job finishes on the other, one version
  chains      `tessera audit verify --database --digests` over everything above

With --pgbouncer, every process reaches Postgres through a PgBouncer of the test's own in
session mode, and the checks that exercise the database run (placement, aliases, cache,
audit, chains): transaction mode cannot work, as the README's "Connection budgets" explains.

With --bench, measures instead throughput through the load balancer with 1, 2 and 3 API
processes (and one process without it), with each process's CPU use.

Run by deploy/local/scale-out.sh, which provides the environment (see there).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(ROOT, "tests", "fixtures", "models", "add_fp32.onnx")
COUNT_LUA = os.path.join(ROOT, "tests", "bench", "oip.lua")
RESOLVE_TTL_MS = 1000
DRAIN_SECONDS = 2
RATE, BURST = 40, 20


def log(message: str) -> None:
    print(f"==> {message}", flush=True)


def fail(message: str) -> None:
    raise SystemExit(f"FAILED: {message}")


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body=None, headers=None, timeout=30.0, source: str | None = None):
    """One HTTP request on a connection of its own: (status, headers, body bytes). `source`
    picks the local address (another loopback address is another peer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                            source_address=(source, 0) if source else None)
    try:
        payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        all_headers = {"content-type": "application/json"} if isinstance(body, (dict, list)) else {}
        all_headers.update(headers or {})
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def wait_for(what: str, predicate, seconds: float, every: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(every)
    fail(f"{what}: not within {seconds} s")


def infer_body(x: list[float], y: list[float]) -> dict:
    return {"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x},
        {"name": "y", "shape": [1, 4], "datatype": "FP32", "data": y},
    ]}


# --- the S3-compatible store and the OTLP receiver -------------------------------------------

class Traces:
    """An OTLP/HTTP (protobuf) receiver keeping every span it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        self.pb = trace_service_pb2
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = receiver.pb.ExportTraceServiceRequest()
                request.ParseFromString(body)
                found = []
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            found.append({
                                "trace": span.trace_id.hex(), "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(), "name": span.name, "kind": span.kind,
                                "attributes": {a.key: a.value.string_value or a.value.int_value for a in span.attributes},
                            })
                with receiver.lock:
                    receiver.spans.extend(found)
                response = receiver.pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(response)))
                self.end_headers()
                self.wfile.write(response)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace"] == trace_id]


# --- the cluster ------------------------------------------------------------------------------

class Cluster:
    def __init__(self, args) -> None:
        self.args = args
        self.bin = args.bin
        self.work = tempfile.mkdtemp(prefix="tessera-scale-")
        self.children: list[subprocess.Popen] = []
        self.apis: dict[int, subprocess.Popen] = {}
        self.api_ports = [free_port() for _ in range(3)]
        self.workers: list[subprocess.Popen] = []
        self.redis_port = free_port()
        self.redis: subprocess.Popen | None = None
        self.lb_port = free_port()
        self.lb: subprocess.Popen | None = None
        self.database = f"tessera_scale_{uuid.uuid4().hex[:12]}"
        self.bucket = "tessera-scale"
        self.traces = Traces()
        self.pgbouncer_port: int | None = None

    # processes

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(os.path.join(self.work, f"{name}.log"), "ab")
        # A directory of its own: what a process writes to its disk shows there.
        cwd = os.path.join(self.work, "cwd", name)
        os.makedirs(cwd, exist_ok=True)
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd)
        self.children.append(child)
        return child

    def start_redis(self) -> None:
        self.redis = self.spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"])
        wait_for("redis starts", lambda: subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"],
                                                        capture_output=True, text=True).stdout.strip() == "PONG", 10)

    def bucket_keys(self) -> list[str]:
        status, _, body = request(self.s3_port, "GET", f"/{self.bucket}?list-type=2")
        check(status == 200, f"listing the bucket: {status}")
        return re.findall(r"<Key>([^<]+)</Key>", body.decode())

    def start_s3(self) -> None:
        port = self.s3_port = free_port()
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        self.spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], os.environ.copy())
        wait_for("the S3 server starts", lambda: request(port, "GET", "/")[0] == 200, 30)
        status, _, body = request(port, "PUT", f"/{self.bucket}", b"")
        check(status == 200, f"creating the bucket: {status} {body[:200]!r}")

    def environment(self) -> dict:
        url = urllib.parse.urlsplit(os.environ["TESSERA_TEST_DATABASE_URL"])
        owner = urllib.parse.urlunsplit(url._replace(path="/" + self.database))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA")}
        env.update({
            "TESSERA_ENV": "test",
            "TESSERA_CONFIG_DIR": os.path.join(ROOT, "config"),
            "TESSERA__DATABASE__URL": f"postgres://tessera_app@{url.hostname}:{self.pgbouncer_port or url.port or 5432}/{self.database}",
            "TESSERA__DATABASE__PASSWORD": os.environ.get("TESSERA_TEST_APP_PASSWORD", ""),
            "TESSERA__DATABASE__MIGRATION_URL": owner,
            "TESSERA__DATABASE__MIGRATE_ON_START": "false",
            "TESSERA__REDIS__URL": f"redis://127.0.0.1:{self.redis_port}",
            "TESSERA__REDIS__KEY_PREFIX": "scale",
            "TESSERA__REGISTRY__STORAGE__BACKEND": "s3",
            "TESSERA__REGISTRY__STORAGE__S3_BUCKET": self.bucket,
            "TESSERA__REGISTRY__STORAGE__S3_ENDPOINT": self.s3_endpoint,
            "TESSERA__REGISTRY__STORAGE__S3_REGION": "us-east-1",
            "TESSERA__REGISTRY__STORAGE__S3_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "tessera-scale",
            "AWS_SECRET_ACCESS_KEY": "tessera-scale-secret",
            "TESSERA__INFERENCE__ONNXRUNTIME_PATH": os.environ["ORT_DYLIB_PATH"],
            "TESSERA__INFERENCE__RESOLVE_TTL_MS": str(RESOLVE_TTL_MS),
            "TESSERA__TELEMETRY__METRICS_ADDRESS": "127.0.0.1:0",
            # The load balancer in front is HTTP's; each process's gRPC port is its own.
            "TESSERA__SERVER__GRPC_PORT": "0",
            # Quiet logs, and yet traces: the two are filtered apart.
            "TESSERA__TELEMETRY__LOG_FILTER": "warn",
            "TESSERA__TELEMETRY__OTLP__ENDPOINT": f"http://127.0.0.1:{self.traces.port}/v1/traces",
            # Only callers' sampled traces are exported, not the load's.
            "TESSERA__TELEMETRY__OTLP__SAMPLE_RATIO": "0",
            "TESSERA__SERVER__DRAIN_SECONDS": str(DRAIN_SECONDS),
            # HAProxy: its traceparent is followed; any other peer's is only a link.
            "TESSERA__SERVER__TRUSTED_PROXIES": "127.0.0.1",
            "TESSERA__SERVER__SHUTDOWN_GRACE_SECONDS": "10",
            "TESSERA__JOBS__WORKERS": "0",
            "TESSERA__JOBS__VISIBILITY_TIMEOUT_MS": "4000",
            "TESSERA__JOBS__DISPATCH_INTERVAL_MS": "200",
            "TESSERA__JOBS__EVENTS_POLL_MS": "100",
        })
        if self.args.bench:
            # What is measured is the processes, not the trace pipeline.
            env.update({"TESSERA_ENV": "development", "TESSERA__SERVER__WORKERS": "0",
                        "TESSERA__DATABASE__MAX_CONNECTIONS": "16", "TESSERA__TELEMETRY__OTLP__ENDPOINT": ""})
        return env

    def tessera(self, *args: str, check_ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.bin, *args], env=self.environment(), capture_output=True, text=True, timeout=300)
        if check_ok and done.returncode != 0:
            fail(f"tessera {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def psql(self, sql: str) -> str:
        url = urllib.parse.urlsplit(os.environ["TESSERA_TEST_DATABASE_URL"])
        owner = urllib.parse.urlunsplit(url._replace(path="/" + self.database))
        return subprocess.run(["psql", owner, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                              check=True, capture_output=True, text=True).stdout.strip()

    def start_pgbouncer(self) -> None:
        """PgBouncer in session mode in front of the test's Postgres. It refuses to run as root,
        so as the postgres system user, from a directory that user can read."""
        url = urllib.parse.urlsplit(os.environ["TESSERA_TEST_DATABASE_URL"])
        home = tempfile.mkdtemp(prefix="tessera-pgbouncer-")
        os.chmod(home, 0o755)
        self.pgbouncer_port = free_port()
        with open(os.path.join(home, "userlist.txt"), "w") as f:
            f.write(f'"tessera_app" "{os.environ.get("TESSERA_TEST_APP_PASSWORD", "")}"\n')
        with open(os.path.join(home, "pgbouncer.ini"), "w") as f:
            f.write(f"""[databases]
{self.database} = host={url.hostname} port={url.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.pgbouncer_port}
unix_socket_dir =
auth_type = plain
auth_file = {home}/userlist.txt
pool_mode = session
# sqlx sets extra_float_digits at connection start, which PgBouncer passes on only when told.
ignore_startup_parameters = extra_float_digits
max_client_conn = 400
default_pool_size = 60
""")
        for name in os.listdir(home):
            os.chmod(os.path.join(home, name), 0o644)
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.spawn("pgbouncer", [*as_user, shutil.which("pgbouncer") or "pgbouncer", os.path.join(home, "pgbouncer.ini")])
        wait_for("pgbouncer listens", lambda: socket.create_connection(("127.0.0.1", self.pgbouncer_port), 1).close() or True, 10)

    def create_database(self) -> None:
        admin = os.environ["TESSERA_TEST_DATABASE_URL"]
        subprocess.run(["psql", admin, "-qAt", "-c", f"CREATE DATABASE {self.database}"], check=True, capture_output=True)
        self.tessera("migrate")

    def start_api(self, index: int) -> None:
        env = self.environment()
        env["TESSERA__SERVER__PORT"] = str(self.api_ports[index])
        self.apis[index] = self.spawn(f"api{index}", [self.bin, "serve"], env)

    def wait_api(self, index: int) -> None:
        port = self.api_ports[index]
        wait_for(f"API process {index} ready", lambda: request(port, "GET", "/readyz", timeout=2)[0] == 200, 60)

    def start_worker(self, index: int) -> subprocess.Popen:
        worker = self.spawn(f"worker{index}", [self.bin, "worker"], self.environment())
        self.workers.append(worker)
        return worker

    def start_lb(self, servers: list[int] | None = None, retry_unanswered: bool = False) -> None:
        """HAProxy in front of `servers`. It retries a request elsewhere when its connection was
        refused; with `retry_unanswered`, also when a server closed the connection without a
        byte of answer, as a process killed outright does to requests sent on a kept-alive
        connection it held."""
        servers = list(range(3)) if servers is None else servers
        retry_on = "conn-failure empty-response" if retry_unanswered else "conn-failure"
        lines = "\n".join(
            f"    server api{i} 127.0.0.1:{self.api_ports[i]} check inter 250ms fall 1 rise 2" for i in servers)
        config = f"""global
    maxconn 4096
    stats socket {self.work}/haproxy.sock mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 10s
    # A connection refused (a process gone) is tried again on another process (and, with
    # retry_unanswered, a request whose connection closed without a byte of answer).
    retries 3
    retry-on {retry_on}
    option redispatch 1
frontend tessera
    bind 127.0.0.1:{self.lb_port}
    default_backend api
backend api
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{lines}
"""
        path = os.path.join(self.work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(config)
        if self.lb is not None:
            self.lb.terminate()
            self.lb.wait()
        self.lb = self.spawn("haproxy", ["haproxy", "-f", path, "-db"])
        wait_for("the load balancer has every server up", lambda: self.servers_up() == len(servers), 30)

    def lb_stat(self) -> list[dict]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(self.work, "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","))) for line in lines[1:] if line]

    def servers_up(self) -> int:
        return sum(1 for row in self.lb_stat() if row["svname"].startswith("api") and row["status"] == "UP")

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait()
        admin = os.environ["TESSERA_TEST_DATABASE_URL"]
        subprocess.run(["psql", admin, "-qAt", "-c", f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)"],
                       capture_output=True)
        if self.args.keep:
            print(f"logs kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def tail_logs(self) -> None:
        for name in sorted(os.listdir(self.work)):
            if name.endswith(".log"):
                with open(os.path.join(self.work, name), "rb") as f:
                    text = f.read().decode(errors="replace").strip().splitlines()[-15:]
                if text:
                    print(f"--- {name}\n" + "\n".join(text), file=sys.stderr)


def wrk(port: int, path: str, body_file: str, headers: str, seconds: float, connections: int = 16) -> dict:
    """A wrk run through COUNT_LUA: counts by class, socket errors, req/s and p99 (ms)."""
    env = dict(os.environ, BODY_FILE=body_file, HEADERS=headers)
    started = time.monotonic()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", COUNT_LUA,
                          f"http://127.0.0.1:{port}{path}"], env=env, capture_output=True, text=True).stdout
    elapsed = time.monotonic() - started
    counts = dict(re.findall(r"(ok|limited|other)=(\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else float("nan")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not counts:
        fail(f"wrk printed no counts:\n{out}")
    return {
        "ok": int(counts["ok"]), "limited": int(counts["limited"]), "other": int(counts["other"]),
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "rps": float(rps.group(1)) if rps else 0.0, "p99_ms": p99_ms, "elapsed": elapsed, "raw": out,
    }


def in_background(function, *args):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(function(*args)))
    thread.start()
    return thread, result


# --- the checks ---------------------------------------------------------------------------

class Scenario:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.summary: list[str] = []

    def report(self, line: str) -> None:
        log(line)
        self.summary.append(line)

    def setup_tenants(self) -> None:
        c = self.c
        for slug in ("scale", "limited"):
            c.tessera("tenant", "create", "--slug", slug, "--name", f"Scale-out {slug}")
        c.psql("UPDATE tenants SET rate_limit_per_second = 10000000, rate_limit_burst = 10000000 WHERE slug = 'scale'")
        c.psql(f"UPDATE tenants SET rate_limit_per_second = {RATE}, rate_limit_burst = {BURST} WHERE slug = 'limited'")

        def key(tenant: str, role: str) -> str:
            out = c.tessera("apikey", "create", "--tenant", tenant, "--name", f"{role}-{uuid.uuid4().hex[:6]}",
                            "--role", role).stdout
            return json.loads(out)["secret"]

        self.engineer = key("scale", "ml_engineer")
        self.caller = key("scale", "inference")
        self.limited_engineer = key("limited", "ml_engineer")
        self.limited_caller = key("limited", "inference")

    def auth(self, token: str) -> dict:
        return {"authorization": f"Bearer {token}"}

    def infer(self, port: int, model: str, body: dict, token: str, version: str | None = None, headers=None, source=None):
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
        return request(port, "POST", path, body, {**self.auth(token), **(headers or {})}, source=source)

    def upload(self, port: int, tenant: str, token: str, model: str) -> None:
        self.c.tessera("model", "upload", MODEL, "--server", f"http://127.0.0.1:{port}", "--token", token,
                       "--tenant", tenant, "--model", model, "--no-progress")

    def placement(self) -> None:
        c = self.c
        a, b, d = c.api_ports
        status, _, body = request(a, "POST", "/v1/tenants/scale/models",
                                  {"name": "add", "framework": "onnx", "deterministic": True,
                                   "serving": {"cache_ttl_seconds": 600}}, self.auth(self.engineer))
        check(status == 201, f"creating the model: {status} {body[:300]!r}")
        self.upload(a, "scale", self.engineer, "add")
        objects = c.psql("SELECT count(*) FROM model_versions")
        for port in (b, d):
            status, _, raw = self.infer(port, "add", infer_body([1, 2, 3, 4], [10, 20, 30, 40]), self.caller)
            check(status == 200, f"version uploaded through process 0, served by :{port}: {status} {raw[:300]!r}")
            out = json.loads(raw)["outputs"][0]["data"]
            check(out == [11, 22, 33, 44], f"the answer of :{port}: {out}")
        written = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(c.work, "cwd")) for name in names]
        check(not written, f"no process wrote to its disk: {written}")
        artifact = c.psql("SELECT id FROM model_versions")
        keys = c.bucket_keys()
        check(any(k.endswith(f"/artifacts/{artifact}") for k in keys), f"the artifact {artifact} is in the bucket: {keys}")
        self.report(f"placement: version uploaded through process 0 ({objects} version) served by processes 1 and 2; "
                    f"{len(keys)} objects in S3, nothing on the processes' disks")

    def aliases(self) -> None:
        c = self.c
        a, b, _ = c.api_ports
        self.upload(a, "scale", self.engineer, "add")  # version 2
        status, _, body = request(a, "PUT", "/v1/tenants/scale/models/add/aliases/production", {"version": 1},
                                  self.auth(self.engineer))
        check(status in (200, 204), f"setting the alias: {status} {body[:300]!r}")
        version_of = lambda port: json.loads(self.infer(port, "add", infer_body([1, 1, 1, 1], [1, 1, 1, 1]),
                                                        self.caller, "production")[2])["model_version"]
        for port in c.api_ports:
            wait_for(f"process :{port} serves production = 1", lambda: version_of(port) == "1", 5, 0.05)
        status, _, body = request(b, "PUT", "/v1/tenants/scale/models/add/aliases/production", {"version": 2},
                                  self.auth(self.engineer))
        check(status in (200, 204), f"moving the alias: {status} {body[:300]!r}")
        moved = time.monotonic()
        seen = {}
        for port in c.api_ports:
            wait_for(f"process :{port} sees the alias move", lambda: version_of(port) == "2", 10, 0.02)
            seen[port] = (time.monotonic() - moved) * 1000
        slowest = max(seen.values())
        # Polling adds a call per process on top of the TTL, slower on a loaded machine.
        check(slowest <= RESOLVE_TTL_MS + 500, f"an alias move took {slowest:.0f} ms to reach every process")
        self.report(f"aliases: moved through process 1, seen by all 3 within {slowest:.0f} ms (resolve_ttl_ms {RESOLVE_TTL_MS})")

    def cache(self) -> None:
        c = self.c
        body = infer_body([random.random() for _ in range(4)], [random.random() for _ in range(4)])
        statuses = []
        for port in c.api_ports:
            status, headers, raw = self.infer(port, "add", body, self.caller)
            check(status == 200, f"cached call on :{port}: {status} {raw[:200]!r}")
            statuses.append(headers.get("tessera-cache"))
        check(statuses == ["miss", "hit", "hit"], f"the cache is shared: {statuses}")
        self.report("cache: miss on process 0, then hits on processes 1 and 2")

    def rate_limit(self) -> None:
        c = self.c
        status, _, body = request(c.api_ports[0], "POST", "/v1/tenants/limited/models",
                                  {"name": "add", "framework": "onnx"}, self.auth(self.limited_engineer))
        check(status == 201, f"creating the limited tenant's model: {status} {body[:200]!r}")
        self.upload(c.api_ports[0], "limited", self.limited_engineer, "add")
        for port in c.api_ports:  # loaded everywhere first: loading is not what is measured
            wait_for("the model loads", lambda: self.infer(port, "add", infer_body([1] * 4, [1] * 4),
                                                           self.limited_caller)[0] in (200, 429), 30)
        time.sleep(BURST / RATE + 1)  # the bucket refills
        result = wrk(c.lb_port, "/v2/models/add/infer", self.body_file, f"Authorization: Bearer {self.limited_caller}", 8)
        allowed = RATE * result["elapsed"] + BURST
        self.report(f"rate limit: {result['ok']} accepted of {allowed:.0f} allowed ({RATE}/s x {result['elapsed']:.1f} s + burst {BURST}) "
                    f"across 3 processes; {result['limited']} refused with 429")
        check(result["ok"] <= allowed, "the limit held across processes")
        check(result["ok"] >= 0.8 * RATE * result["elapsed"], "the limit let through what it allows")
        check(result["other"] == 0 and result["socket_errors"] == 0, f"nothing else failed: {result['raw']}")

    def audit(self) -> None:
        c = self.c
        # Calls that arrive together share one chained record, which lists each of them. Only
        # this tenant's, counted once the earlier steps' records have all landed (the other
        # tenant's refused calls are still being written for a while).
        calls = ("SELECT coalesce(sum(json_array_length(details->'calls')), 0) FROM audit_events "
                 "WHERE action = 'inference.call' AND tenant_id = (SELECT id FROM tenants WHERE slug = 'scale')")
        settled = []
        wait_for("earlier calls are all recorded", lambda: settled.append(int(c.psql(calls))) or settled[-2:-1] == settled[-1:], 60, 1)
        before = settled[-1]
        body = infer_body([0.5] * 4, [0.25] * 4)
        jobs = [port for port in c.api_ports for _ in range(500)]
        headers = {"cache-control": "no-cache"}

        def call(port: int) -> int:
            return self.infer(port, "add", body, self.caller, headers=headers)[0]

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            statuses = list(pool.map(call, jobs))
        ok = statuses.count(200)
        check(ok == len(jobs), f"every audited call answered: {len([s for s in statuses if s != 200])} did not ({set(statuses)})")
        wait_for("every call is in the audit log",
                 lambda: int(c.psql(calls)) - before >= len(jobs), 30)
        time.sleep(1)
        recorded = int(c.psql(calls)) - before
        check(recorded == len(jobs), f"each call recorded once: {recorded} of {len(jobs)}")
        self.report(f"audit: {len(jobs)} concurrent audited calls over 3 processes answered 200 and recorded")

    def trace(self) -> None:
        c = self.c
        trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        # The same sampled traceparent straight from a peer that is no trusted proxy: a link
        # at most, never a sampled child (sample_ratio is 0 here).
        outside_id = uuid.uuid4().hex
        status, _, raw = self.infer(c.api_ports[0], "add", infer_body([0.5] * 4, [0] * 4), self.caller,
                                    headers={"traceparent": f"00-{outside_id}-{parent}-01"}, source="127.0.0.2")
        check(status == 200, f"the outside call: {status} {raw[:200]!r}")
        time.sleep(RESOLVE_TTL_MS / 1000 + 0.2)  # the model is resolved from Postgres again
        body = infer_body([random.random() for _ in range(4)], [0] * 4)
        status, _, raw = self.infer(c.lb_port, "add", body, self.caller, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        check(status == 200, f"the traced call: {status} {raw[:200]!r}")

        def complete():
            spans = c.traces.of(trace_id)
            names = {s["name"] for s in spans}
            return spans if any(s["parent"] == parent for s in spans) and "redis" in names and "postgres.transaction" in names else None

        spans = wait_for("the request's trace is exported", complete, 20, 0.2)
        roots = [s for s in spans if s["parent"] == parent]
        check(len(roots) == 1, f"one API span under the caller's: {roots}")
        by_id = {s["id"]: s for s in spans}

        def under_root(span: dict) -> bool:
            while span["parent"] in by_id:
                span = by_id[span["parent"]]
            return span is roots[0]

        check(all(under_root(s) for s in spans), f"every span of the trace descends from the API span: {spans}")
        check(not c.traces.of(outside_id), "an untrusted caller's sampled traceparent was followed")
        children = sorted({s["name"] for s in spans if s is not roots[0]})
        self.report(f"trace: one trace through the load balancer, API span '{roots[0]['name']}' under the caller's traceparent, "
                    f"{len(spans)} spans including {', '.join(children)}; an outside caller's traceparent was not followed")

    def rolling_restart(self) -> None:
        c = self.c
        seconds = 3 * (DRAIN_SECONDS + 8) + 6
        thread, result = in_background(wrk, c.lb_port, "/v2/models/add/infer", self.body_file,
                                       f"Authorization: Bearer {self.caller}", seconds)
        time.sleep(2)
        for index in range(3):
            old = c.apis[index]
            old.send_signal(signal.SIGTERM)
            code = old.wait(timeout=DRAIN_SECONDS + 15)
            check(code == 0, f"process {index} exited with {code} after SIGTERM")
            c.start_api(index)
            c.wait_api(index)
            wait_for("the load balancer has the restarted process", lambda: c.servers_up() == 3, 15)
        check(thread.is_alive(), "the load lasted until every process was restarted")
        thread.join()
        sent = result["ok"] + result["limited"] + result["other"]
        self.report(f"rolling restart: {sent} requests sent through the load balancer while each API process was "
                    f"restarted in turn; failed: {result['other'] + result['limited']} non-2xx, {result['socket_errors']} socket errors")
        check(result["other"] == 0 and result["limited"] == 0 and result["socket_errors"] == 0,
              f"no request lost in a rolling restart:\n{result['raw']}")
        check(sent > 1000, f"the load was real: {sent}")

    def kill_api(self) -> None:
        c = self.c
        connections = 16
        # Without it, requests HAProxy sends on idle kept-alive connections to the dead process
        # in the moments before its health check notices fail too, beyond what was in flight.
        c.start_lb(retry_unanswered=True)
        thread, result = in_background(wrk, c.lb_port, "/v2/models/add/infer", self.body_file,
                                       f"Authorization: Bearer {self.caller}", 8, connections)
        time.sleep(3)
        c.apis[0].kill()
        c.apis[0].wait()
        thread.join()
        failed = result["other"] + result["limited"] + result["socket_errors"]
        sent = result["ok"] + result["limited"] + result["other"]
        # At most what was in flight on the killed process: one request per connection.
        check(failed <= connections, f"kill -9 cost {failed} requests, more than were in flight:\n{result['raw']}")
        after = wrk(c.lb_port, "/v2/models/add/infer", self.body_file, f"Authorization: Bearer {self.caller}", 3, connections)
        after_failed = after["other"] + after["limited"] + after["socket_errors"]
        check(after_failed == 0, f"the load balancer routes around the dead process:\n{after['raw']}")
        self.report(f"kill -9: {failed} of {sent} requests failed (at most the {connections} in flight); "
                    f"then {after['ok']} requests with the process still dead, 0 failed")
        c.start_api(0)
        c.wait_api(0)
        c.start_lb()

    def redis_outage(self) -> None:
        c = self.c
        thread, result = in_background(wrk, c.lb_port, "/v2/models/add/infer", self.body_file,
                                       f"Authorization: Bearer {self.caller}", 12)
        time.sleep(3)
        c.redis.kill()
        c.redis.wait()
        time.sleep(1)
        statuses = [request(port, "GET", "/readyz")[0] for port in c.api_ports]
        bodies = [json.loads(request(port, "GET", "/readyz")[2]) for port in c.api_ports]
        up = c.servers_up()
        time.sleep(3)
        c.start_redis()
        thread.join()
        failed = result["other"] + result["limited"] + result["socket_errors"]
        check(statuses == [200, 200, 200] and all(b["status"] == "degraded" for b in bodies),
              f"readiness while Redis is down: {statuses} {bodies}")
        check(up == 3, f"every process stayed in rotation: {up}")
        check(failed == 0, f"no call failed while Redis was down:\n{result['raw']}")
        sent = result["ok"] + result["limited"] + result["other"]
        self.report(f"redis outage: killed for 4 s under load; {sent} calls, {failed} failed; readiness 200 'degraded' on all 3")

    def worker_failover(self) -> None:
        c = self.c
        workers = [c.start_worker(0), c.start_worker(1)]
        rng = random.Random(13)
        centres = [[3, 0, -3, 1], [-3, 3, 0, -1], [0, -3, 3, 2]]
        rows = ["a,b,c,d,label"]
        for i in range(300):
            label = i % 3
            rows.append(",".join(f"{v + rng.gauss(0, 0.5):.4f}" for v in centres[label]) + f",{label}")
        port = c.api_ports[1]
        status, _, raw = request(port, "POST", "/v1/tenants/scale/datasets?name=blobs", ("\n".join(rows) + "\n").encode(),
                                 {**self.auth(self.engineer), "content-type": "text/csv"})
        check(status == 201, f"dataset upload: {status} {raw[:200]!r}")
        dataset = json.loads(raw)["id"]
        spec = {"kind": "train", "model": "blobs-mlp", "architecture": "mlp",
                "config": {"inputs": 4, "hidden": [16], "outputs": 3}, "dataset": dataset, "target": "label",
                "epochs": 1500, "learning_rate": 0.02, "batch_size": 32, "validation_split": 0.25, "seed": 7}
        status, _, raw = request(port, "POST", "/v1/tenants/scale/jobs", spec, self.auth(self.engineer))
        check(status == 201, f"job submission: {status} {raw[:200]!r}")
        job = json.loads(raw)["id"]

        def job_view():
            return json.loads(request(c.api_ports[2], "GET", f"/v1/tenants/scale/jobs/{job}", headers=self.auth(self.engineer))[2])

        wait_for("training gets going", lambda: (job_view().get("progress") or {}).get("epoch", 0) >= 2, 180, 0.2)
        holder = c.psql(f"SELECT worker FROM jobs WHERE id = '{job}'")
        pid = holder.split("-")[-3]
        victim = next((w for w in workers if str(w.pid) == pid), None)
        check(victim is not None, f"a worker process holds the job ({holder})")
        victim.kill()
        victim.wait()
        finished = wait_for("the job finishes on the other worker",
                            lambda: (v := job_view())["status"] in ("succeeded", "failed", "dead", "cancelled") and v, 300, 0.5)
        check(finished["status"] == "succeeded", f"the job: {finished}")
        versions = int(c.psql(f"SELECT count(*) FROM model_versions WHERE job_id = '{job}'"))
        check(versions == 1, f"one model version registered, not {versions}")
        self.report(f"worker kill -9: job taken over and succeeded after {finished['attempts']} attempts; {versions} version registered")

    def chains(self) -> None:
        c = self.c
        done = c.tessera("audit", "verify", "--database", "--digests", check_ok=False)
        output = (done.stdout + done.stderr).strip()
        check(done.returncode == 0, f"audit verify --database --digests:\n{output}")
        events = c.psql("SELECT count(*) FROM audit_events")
        chains = c.psql("SELECT count(DISTINCT tenant_id) FROM audit_events")
        self.report(f"chains: {chains} chains, {events} events verified gapless and signed (audit verify --database --digests)")

    def prepare(self) -> None:
        """The load's request body, the tenants and their keys, the model on every process."""
        self.body_file = os.path.join(self.c.work, "body.json")
        with open(self.body_file, "w") as f:
            json.dump(infer_body([1, 2, 3, 4], [4, 3, 2, 1]), f)
        self.setup_tenants()
        self.placement()

    def run(self) -> None:
        self.prepare()
        self.aliases()
        self.cache()
        self.rate_limit()
        self.audit()
        self.trace()
        self.rolling_restart()
        self.kill_api()
        self.redis_outage()
        self.worker_failover()
        self.chains()


    def through_pgbouncer(self) -> None:
        self.prepare()
        self.aliases()
        self.cache()
        self.audit()
        self.chains()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(c: Cluster, scenario: Scenario, seconds: int) -> None:
    scenario.prepare()
    c.psql("INSERT INTO audit_settings (tenant_id, inference_mode) SELECT id, 'every_call' FROM tenants "
           "WHERE slug = 'scale' ON CONFLICT (tenant_id) DO NOTHING")
    headers = f"Authorization: Bearer {scenario.caller};;Cache-Control: no-cache"
    rows = []

    def measure(label: str, port: int, processes: list[int], connections: int) -> None:
        wrk(port, "/v2/models/add/infer", scenario.body_file, headers, 2, connections)  # warm
        pids = {f"api{i}": c.apis[i].pid for i in processes}
        if port == c.lb_port:
            pids["haproxy"] = c.lb.pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result = wrk(port, "/v2/models/add/infer", scenario.body_file, headers, seconds, connections)
        cpu = {name: (cpu_seconds(pid) - before[name]) / result["elapsed"] * 100 for name, pid in pids.items()}
        rss = max(rss_mib(c.apis[i].pid) for i in processes)
        failed = result["other"] + result["limited"] + result["socket_errors"]
        check(failed == 0, f"{label}: {failed} failed\n{result['raw']}")
        rows.append((label, connections, result["rps"], result["p99_ms"],
                     ", ".join(f"{name} {share:.0f}%" for name, share in cpu.items()), rss))
        log(f"{label}, {connections} connections: {result['rps']:.0f} req/s, p99 {result['p99_ms']:.2f} ms")

    for connections in (16, 64):
        measure("1 process, direct", c.api_ports[0], [0], connections)
        for n in (1, 2, 3):
            c.start_lb(list(range(n)))
            measure(f"{n} process{'es' if n > 1 else ''} behind HAProxy", c.lb_port, list(range(n)), connections)
    print()
    print("| setup | connections | req/s | p99 ms | CPU per process (% of one core) | largest API RSS MiB |")
    print("|---|---:|---:|---:|---|---:|")
    for label, connections, rps, p99, cpu, rss in rows:
        print(f"| {label} | {connections} | {rps:,.0f} | {p99:.2f} | {cpu} | {rss:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="the tessera binary")
    parser.add_argument("--bench", action="store_true", help="measure throughput with 1, 2 and 3 processes instead")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per benchmark run")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    parser.add_argument("--pgbouncer", action="store_true", help="reach Postgres through PgBouncer (session mode)")
    args = parser.parse_args()
    for tool in ("haproxy", "wrk", "redis-server", "psql"):
        check(shutil.which(tool) is not None, f"{tool} is not installed")

    cluster = Cluster(args)
    scenario = Scenario(cluster)
    started = time.monotonic()
    ok = False
    try:
        cluster.start_redis()
        cluster.start_s3()
        cluster.create_database()
        if args.pgbouncer:
            cluster.start_pgbouncer()
        for index in range(3):
            cluster.start_api(index)
        for index in range(3):
            cluster.wait_api(index)
        cluster.start_lb()
        if args.bench:
            bench(cluster, scenario, args.seconds)
        elif args.pgbouncer:
            scenario.through_pgbouncer()
        else:
            scenario.run()
        ok = True
    finally:
        if not ok:
            cluster.tail_logs()
        cluster.stop()
    if not args.bench:
        through = ", through PgBouncer (session mode)" if args.pgbouncer else ""
        workers = f", {len(cluster.workers)} workers" if cluster.workers else ""
        print(f"\nScale-out: 3 API processes{workers}, HAProxy, one Postgres{through}, one Redis, S3 (moto)")
        for line in scenario.summary:
            print(f"  {line}")
        print(f"passed in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
