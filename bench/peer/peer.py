#!/usr/bin/env python3
"""Brankas against another FHIR server (Helios HFS), side by side, on one machine, in one run.

Started by bench/peer/run.sh (see BENCHMARKS.md, "Against Helios HFS 0.2.7"). Each run is a
fresh server, the same Synthea transaction Bundles loaded by 4 concurrent clients, then the
wrk phases (read by id, identifier lookup, compartment search) and a CRUD cycle; the runs go
in the order given by --order (default Brankas, HFS, HFS, Brankas) and each server's figures
are the mean of its runs.

Only the Python standard library is used (http.client, threads), so the loader and the CRUD
users cost the same on both sides; the read phases are driven by wrk.
"""

import argparse
import base64
import datetime
import glob
import http.client
import json
import os
import platform
import random
import resource
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
REPO = os.path.dirname(os.path.dirname(HERE))
SYNTHEA_SYSTEM = "https://github.com/synthetichealth/synthea"
FACILITY = "Organization/fac-0001"


class BenchError(Exception):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def dir_bytes(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def pct(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


class Http:
    """One keep-alive HTTP/1.1 connection (one per client thread)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, r, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def location_id(loc):
    """'Type/id' from a transaction-response location or a Location header (relative or absolute,
    with or without /_history/v)."""
    loc = loc.split("?")[0].split("/_history")[0].rstrip("/")
    parts = loc.split("/")
    if len(parts) < 2:
        raise BenchError(f"unexpected location {loc!r}")
    return f"{parts[-2]}/{parts[-1]}"


# ----- the servers -----


class Server:
    name = ""
    prefix = ""

    def __init__(self, binary, work, log_level):
        self.binary = binary
        self.work = work
        self.log_level = log_level
        self.proc = None
        self.port = None
        self.log_path = os.path.join(work, "server.log")

    @property
    def pid(self):
        return self.proc.pid

    def cpu(self):
        return proc_cpu_seconds(self.proc.pid)

    def auth_headers(self):
        return {}

    def fresh_token(self):
        """Called before each phase (a Brankas token lives at most 300 s)."""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def check_alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{tail(self.log_path)}")


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class Brankas(Server):
    name = "Brankas"
    prefix = "/fhir"

    def cli(self, *args):
        env = dict(os.environ, BRANKAS_LOG="warn")
        r = subprocess.run([self.binary, *args, "--data-dir", self.data, "--key-file", self.key], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise BenchError(f"brankas {args[0]} {args[1] if len(args) > 1 else ''} failed ({r.returncode}): {r.stderr.strip()[:1500]}")
        return json.loads(r.stdout)

    def start(self):
        self.data = os.path.join(self.work, "data")
        self.key = os.path.join(self.work, "master.key")
        self.admin = self.cli("init")
        help_text = subprocess.run([self.binary, "clients", "create", "--help"], capture_output=True, text=True).stdout
        args = ["clients", "create", "--name", "peer benchmark facility", "--role", "facility-system", "--organization", FACILITY, "--scopes", "system/*.cruds"]
        # A load generator is a legitimate system touching every patient: the guard's patient
        # budgets and request limits are set far above what a run does, so that no read is refused.
        self.guard = {}
        if "--budget-per-hour" in help_text:
            args += ["--budget-per-hour", "100000000", "--budget-per-day", "100000000"]
            self.guard.update(budget_per_hour=100000000, budget_per_day=100000000)
        if "--rate-per-second" in help_text:
            args += ["--rate-per-second", "1000000", "--burst", "1000000", "--max-concurrent", "100000"]
            self.guard.update(rate_per_second=1000000, burst=1000000, max_concurrent=100000)
        self.client = self.cli(*args)
        if self.client.get("status") == "pending_approval":
            # Two-person rule: the first security officer is active at once and approves.
            officer = self.cli("clients", "create", "--name", "peer benchmark officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs")
            secret = os.path.join(self.work, "officer-secret")
            with open(secret, "w") as f:
                f.write(officer["client_secret"])
            self.cli("clients", "approve", self.client["client_id"], "--approver-id", officer["client_id"], "--approver-secret-file", secret)
        self.port = free_port()
        env = dict(os.environ, BRANKAS_LOG=self.log_level)
        cmd = [self.binary, "serve", "--data-dir", self.data, "--key-file", self.key, "--listen", f"127.0.0.1:{self.port}", "--insecure-http"]
        serve_help = subprocess.run([self.binary, "serve", "--help"], capture_output=True, text=True).stdout
        if "--max-connections-per-address" in serve_help:
            # Every wrk connection comes from 127.0.0.1.
            cmd += ["--max-connections-per-address", "4096", "--max-connections", "4096"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), env=env, text=True)
        ready = threading.Event()
        listening = {}

        def watch():
            for line in self.proc.stdout:
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if v.get("event") == "listening":
                    listening.update(v)
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(120):
            self.check_alive()
            self.stop()
            raise BenchError(f"brankas serve did not report listening within 120 s:\n{tail(self.log_path)}")
        self.fresh_token()

    def token(self, creds):
        basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
        status, _, body = Http(self.port).request(
            "POST", "/auth/token", body="grant_type=client_credentials", headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"}
        )
        if status != 200:
            raise BenchError(f"Brankas token endpoint answered {status}: {body[:300]!r}")
        return json.loads(body)["access_token"]

    def fresh_token(self):
        self.access_token = self.token(self.client)

    def auth_headers(self):
        return {"Authorization": f"Bearer {self.access_token}"}

    def facility_reference(self):
        """The facility client's own Organization, created in the directory by the admin client."""
        admin = self.token(self.admin)
        org = {"resourceType": "Organization", "id": FACILITY.split("/")[1], "active": True, "name": "Peer benchmark facility"}
        status, _, body = Http(self.port).request(
            "PUT", f"/fhir/{FACILITY}", body=json.dumps(org), headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/fhir+json"}
        )
        if status not in (200, 201):
            raise BenchError(f"Brankas: creating {FACILITY} answered {status}: {body[:300]!r}")
        return FACILITY

    def version(self):
        r = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        return r.stdout.strip() or r.stderr.strip()


class Hfs(Server):
    name = "HFS"
    prefix = ""

    def start(self):
        # The search parameters go in HFS's data directory, the database in a directory of its
        # own: that one is what is measured on disk.
        params = os.path.join(self.work, "params")
        self.data = os.path.join(self.work, "db")
        os.makedirs(params)
        os.makedirs(self.data)
        # HFS reads the official R4 search parameters from its data directory.
        shutil.copy(self.search_parameters, os.path.join(params, "search-parameters-r4.json"))
        self.port = free_port()
        cmd = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", self.log_level, "--data-dir", params, "--database-url", os.path.join(self.data, "fhir.db")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFS_") and k != "DATABASE_URL"}
        env["HFS_BASE_URL"] = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, cwd=self.work, env=env)
        deadline = time.time() + 120
        while True:
            self.check_alive()
            try:
                status, _, _ = Http(self.port).request("GET", "/metadata", headers={"Accept": "application/fhir+json"})
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise BenchError(f"HFS did not answer GET /metadata within 120 s:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def facility_reference(self):
        org = {"resourceType": "Organization", "active": True, "name": "Peer benchmark facility"}
        status, r, body = Http(self.port).request("POST", "/Organization", body=json.dumps(org), headers={"Content-Type": "application/fhir+json"})
        if status not in (200, 201):
            raise BenchError(f"HFS: creating the facility Organization answered {status}: {body[:300]!r}")
        return created_id(r, body, "Organization")

    def version(self):
        r = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        return r.stdout.strip() or r.stderr.strip()


def created_id(r, body, rtype):
    loc = r.getheader("location") or r.getheader("content-location")
    if loc:
        return location_id(loc)
    v = json.loads(body)
    if v.get("resourceType") != rtype or not v.get("id"):
        raise BenchError(f"create of {rtype} answered neither a Location nor the resource")
    return f"{rtype}/{v['id']}"


# ----- the data -----


def read_bundles(synthea, n):
    files = sorted(glob.glob(os.path.join(synthea, "*.json")))[:n]
    if len(files) < n:
        raise BenchError(f"asked for {n} bundles, {synthea} has {len(files)}")
    bundles = []
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        b = json.loads(raw)
        if b.get("type") != "transaction":
            raise BenchError(f"{path} is not a transaction Bundle")
        entries = []
        for e in b["entry"]:
            res = e["resource"]
            ident = None
            if res["resourceType"] == "Patient":
                ident = next((i["value"] for i in res.get("identifier", []) if i.get("system") == SYNTHEA_SYSTEM), None)
            entries.append((res["resourceType"], ident))
        observations = sum(1 for t, _ in entries if t == "Observation")
        bundles.append({"name": os.path.basename(path), "bytes": raw, "entries": entries, "observations": observations})
    return bundles


def ingest(server, bundles, clients):
    """POSTs every Bundle as a transaction from `clients` threads; the created ids come from the
    response entries' locations, in the order of the request entries."""
    next_index = [0]
    lock = threading.Lock()
    results = [None] * len(bundles)
    latencies = []
    failures = []

    def worker():
        h = Http(server.port)
        while not failures:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bundles):
                return
            b = bundles[i]
            headers = dict(server.auth_headers(), **{"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Prefer": "return=minimal"})
            t0 = time.perf_counter()
            try:
                status, _, body = h.request("POST", server.prefix or "/", body=b["bytes"], headers=headers)
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(f"{b['name']}: {e}")
                return
            dt = time.perf_counter() - t0
            if status != 200:
                failures.append(f"{b['name']}: HTTP {status}: {body[:400]!r}")
                return
            entries = json.loads(body).get("entry", [])
            if len(entries) != len(b["entries"]):
                failures.append(f"{b['name']}: {len(entries)} entries answered, {len(b['entries'])} sent")
                return
            ids = []
            for e in entries:
                status_line = e.get("response", {}).get("status", "")
                if not status_line.startswith("201") and not status_line.startswith("200"):
                    failures.append(f"{b['name']}: entry answered {status_line!r}")
                    return
                ids.append(location_id(e["response"]["location"]))
            with lock:
                latencies.append(dt)
            results[i] = ids

    cpu0, t0 = server.cpu(), time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    cpu = server.cpu() - cpu0
    if failures:
        raise BenchError(f"{server.name}: transaction ingest failed: {failures[0]}")
    resources = sum(len(b["entries"]) for b in bundles)
    ids, patients, identifiers = [], [], []
    for b, created in zip(bundles, results):
        ids += created
        for (rtype, ident), rid in zip(b["entries"], created):
            if not rid.startswith(rtype + "/"):
                raise BenchError(f"{server.name}: a {rtype} entry answered location {rid}")
            if rtype == "Patient":
                patients.append({"id": rid.split("/")[1], "identifier": ident, "observations": b["observations"]})
    latencies.sort()
    figures = {
        "clients": clients,
        "bundles": len(bundles),
        "resources": resources,
        "seconds": round(secs, 3),
        "resources_per_s": round(resources / secs, 1),
        "bundle_p50_ms": round(pct(latencies, 0.5) * 1000, 1),
        "bundle_p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_resource": round(cpu * 1e6 / resources, 1),
    }
    return figures, ids, patients


def write_targets(work, ids, patients):
    files = {"read": os.path.join(work, "read.txt"), "identifier": os.path.join(work, "identifier.txt"), "compartment": os.path.join(work, "compartment.txt")}
    with open(files["read"], "w") as f:
        f.write("\n".join(ids) + "\n")
    with open(files["identifier"], "w") as f:
        f.write("\n".join(urllib.parse.quote(f"{SYNTHEA_SYSTEM}|{p['identifier']}", safe="") for p in patients if p["identifier"]) + "\n")
    with open(files["compartment"], "w") as f:
        f.write("\n".join(p["id"] for p in patients) + "\n")
    return files


def check_answers(server, ids, patients, rng):
    """Before the timed phases: a sample of each kind of request answers what it should (the
    resource asked for; exactly the one patient; the patient's observations, up to 50), so a
    fast wrong answer cannot pass for a fast right one."""
    h = Http(server.port)
    hdr = dict(server.auth_headers(), Accept="application/fhir+json")
    for rid in rng.sample(ids, min(20, len(ids))):
        status, _, body = h.request("GET", f"{server.prefix}/{rid}", headers=hdr)
        v = json.loads(body) if status == 200 else {}
        if status != 200 or f"{v.get('resourceType')}/{v.get('id')}" != rid:
            raise BenchError(f"{server.name}: GET {rid.split('/')[0]}/<id> answered {status}, not the resource: {body[:300]!r}")
    with_ident = [p for p in patients if p["identifier"]]
    for p in rng.sample(with_ident, min(20, len(with_ident))):
        q = urllib.parse.quote(f"{SYNTHEA_SYSTEM}|{p['identifier']}", safe="")
        status, _, body = h.request("GET", f"{server.prefix}/Patient?identifier={q}", headers=hdr)
        found = [e["resource"].get("id") for e in json.loads(body).get("entry", []) if e.get("search", {}).get("mode", "match") == "match"] if status == 200 else None
        if found != [p["id"]]:
            raise BenchError(f"{server.name}: identifier lookup answered {status} with {found!r}, expected exactly the one patient: {body[:300]!r}")
    for p in rng.sample(patients, min(20, len(patients))):
        status, _, body = h.request("GET", f"{server.prefix}/Observation?patient=Patient/{p['id']}&_count=50", headers=hdr)
        entries = json.loads(body).get("entry", []) if status == 200 else None
        expected = min(50, p["observations"])
        if entries is None or len(entries) != expected or any(e["resource"]["resourceType"] != "Observation" for e in entries):
            raise BenchError(f"{server.name}: compartment search answered {status} with {None if entries is None else len(entries)} entries, expected {expected}: {body[:300]!r}")


# ----- wrk -----


def wrk_phase(server, script, targets, connections, duration, warmup):
    server.fresh_token()
    env = dict(os.environ, PEER_DIR=HERE, PEER_TARGETS=targets, PEER_PREFIX=server.prefix, PEER_TOKEN=server.auth_headers().get("Authorization", "")[len("Bearer ") :])
    threads = min(connections, 2)
    url = f"http://127.0.0.1:{server.port}"

    def run(secs):
        cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{secs}s", "--timeout", "10s", "-s", os.path.join(HERE, script), url]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in r.stdout.splitlines() if x.startswith("PEERJSON ")), None)
        if r.returncode != 0 or line is None:
            raise BenchError(f"wrk failed ({r.returncode}): {r.stderr.strip()[-1000:]} {r.stdout[-1000:]}")
        return json.loads(line[len("PEERJSON ") :])

    if warmup > 0:
        run(warmup)
    server.check_alive()
    cpu0 = server.cpu()
    out = run(duration)
    cpu = server.cpu() - cpu0
    server.check_alive()
    errors = out["errors_status"] + out["errors_connect"] + out["errors_read"] + out["errors_write"] + out["errors_timeout"]
    out.update(
        connections=connections,
        wrk_threads=threads,
        errors=errors,
        flagged=errors > 0,
        server_cpu_s=round(cpu, 2),
        server_cpu_cores=round(cpu / out["duration_s"], 2),
        server_cpu_us_per_req=round(cpu * 1e6 / max(out["requests"], 1), 1),
    )
    if out["requests"] == 0 or errors * 2 > out["requests"]:
        raise BenchError(f"{server.name}: {script} at {connections} connections: {errors} errors of {out['requests']} requests ({out})")
    if errors:
        log(f"  WARNING {server.name} {script} c={connections}: {errors} errors of {out['requests']} requests")
    return out


# ----- the CRUD cycle -----


def crud_cycle(server, users, duration, warmup, seed):
    """Modelled on the Health Samurai FHIR benchmark's CRUD scenario: each iteration creates a
    Patient, reads it, updates it, creates an Encounter at the facility (period.start spread
    over 92 days) and an Observation in it, searches the patient's Observations and reads the
    Observation. Iterations started in the warm-up are not counted."""
    server.fresh_token()
    facility = server.facility_reference()
    base = datetime.datetime(2026, 9, 1, tzinfo=datetime.timezone.utc)
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup
    lock = threading.Lock()
    lat, errors, requests = [], {}, [0]
    p = server.prefix

    def fail(step, status, body):
        key = f"{step} {status}"
        with lock:
            if key not in errors:
                errors[key] = {"count": 0, "sample": body[:300].decode("utf-8", "replace") if isinstance(body, bytes) else str(body)[:300]}
            errors[key]["count"] += 1

    def user(i):
        rng = random.Random(seed * 1000 + i)
        h = Http(server.port)
        hdr = dict(server.auth_headers(), **{"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            n = 0
            try:
                patient = {
                    "resourceType": "Patient",
                    "identifier": [{"system": SYNTHEA_SYSTEM, "value": str(uuid.UUID(int=rng.getrandbits(128)))}],
                    "name": [{"family": f"Peer{rng.randrange(10**6)}", "given": ["Bench"]}],
                    "gender": rng.choice(["male", "female"]),
                    "birthDate": f"{rng.randrange(1940, 2020)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
                }
                status, r, body = h.request("POST", f"{p}/Patient", json.dumps(patient), hdr)
                n += 1
                if status != 201:
                    fail("create Patient", status, body)
                    continue
                pid = created_id(r, body, "Patient")
                status, _, body = h.request("GET", f"{p}/{pid}", None, hdr)
                n += 1
                if status != 200:
                    fail("read Patient", status, body)
                    continue
                patient["id"] = pid.split("/")[1]
                patient["telecom"] = [{"system": "phone", "value": f"+62812{rng.randrange(10**7):07d}"}]
                status, _, body = h.request("PUT", f"{p}/{pid}", json.dumps(patient), hdr)
                n += 1
                if status != 200:
                    fail("update Patient", status, body)
                    continue
                start = base + datetime.timedelta(seconds=rng.randrange(92 * 86400))
                encounter = {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": pid},
                    "serviceProvider": {"reference": facility},
                    "period": {"start": start.isoformat(), "end": (start + datetime.timedelta(minutes=30)).isoformat()},
                }
                status, r, body = h.request("POST", f"{p}/Encounter", json.dumps(encounter), hdr)
                n += 1
                if status != 201:
                    fail("create Encounter", status, body)
                    continue
                eid = created_id(r, body, "Encounter")
                observation = {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                    "subject": {"reference": pid},
                    "encounter": {"reference": eid},
                    "effectiveDateTime": start.isoformat(),
                    "valueQuantity": {"value": rng.randrange(50, 120), "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
                }
                status, r, body = h.request("POST", f"{p}/Observation", json.dumps(observation), hdr)
                n += 1
                if status != 201:
                    fail("create Observation", status, body)
                    continue
                oid = created_id(r, body, "Observation")
                status, _, body = h.request("GET", f"{p}/Observation?patient={pid}", None, hdr)
                n += 1
                if status != 200 or len(json.loads(body).get("entry", [])) != 1:
                    fail("search Observation?patient", status, body)
                    continue
                status, _, body = h.request("GET", f"{p}/{oid}", None, hdr)
                n += 1
                if status != 200:
                    fail("read Observation", status, body)
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop_at:
                    with lock:
                        lat.append(t1 - t0)
            except Exception as e:  # noqa: BLE001 - a dropped connection is an error like a status
                fail("connection", type(e).__name__, str(e))
            finally:
                if t0 >= measure_from:
                    with lock:
                        requests[0] += n

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    # CPU is sampled over the measured window only.
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0, me0, t_m0 = server.cpu(), self_cpu_seconds(), time.perf_counter()
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu, me, secs = server.cpu() - cpu0, self_cpu_seconds() - me0, time.perf_counter() - t_m0
    for t in threads:
        t.join()
    server.check_alive()
    lat.sort()
    n_err = sum(e["count"] for e in errors.values())
    out = {
        "users": users,
        "seconds": round(secs, 2),
        "iterations": len(lat),
        "iterations_per_s": round(len(lat) / secs, 1),
        "requests_per_s": round(requests[0] / secs, 1),
        "iteration_p50_ms": round(pct(lat, 0.5) * 1000, 1),
        "iteration_p99_ms": round(pct(lat, 0.99) * 1000, 1),
        "errors": n_err,
        "errors_by_status": errors,
        "flagged": n_err > 0,
        "server_cpu_s": round(cpu, 2),
        "server_cpu_cores": round(cpu / secs, 2),
        "server_cpu_us_per_iteration": round(cpu * 1e6 / max(len(lat), 1), 1),
        "load_generator_cpu_cores": round(me / secs, 2),
    }
    if not lat or n_err > len(lat):
        raise BenchError(f"{server.name}: CRUD cycle: {n_err} errors, {len(lat)} iterations done: {json.dumps(errors)[:1500]}")
    if n_err:
        log(f"  WARNING {server.name} CRUD: {n_err} errors: {json.dumps(errors)[:600]}")
    return out


# ----- one run -----

PHASES = [
    ("read", "read.lua", "read by id", [1, 16, 32]),
    ("identifier", "identifier.lua", "identifier lookup Patient?identifier=", [1, 16, 32]),
    ("compartment", "compartment.lua", "compartment search Observation?patient=&_count=50", [1, 16, 32]),
]


def one_run(kind, args, bundles, index, search_parameters):
    work = tempfile.mkdtemp(prefix=f"peer-{kind}-", dir=args.tmp)
    server = Brankas(args.brankas, work, args.brankas_log) if kind == "brankas" else Hfs(args.hfs, work, args.hfs_log)
    server.search_parameters = search_parameters
    log(f"run {index + 1}: {server.name} in {work}")
    run = {"server": server.name, "order": index + 1, "work_dir": work}
    try:
        server.start()
        run["port"] = server.port
        if kind == "brankas":
            run["guard"] = server.guard
        log(f"  ingest {len(bundles)} bundles, {args.ingest_clients} clients")
        run["ingest"], ids, patients = ingest(server, bundles, args.ingest_clients)
        log(f"  ingest: {run['ingest']['resources_per_s']} resources/s")
        time.sleep(1)
        run["data_dir_bytes_after_ingest"] = dir_bytes(server.data)
        run["patients"] = len(patients)
        targets = write_targets(work, ids, patients)
        check_answers(server, ids, patients, random.Random(args.seed))
        run["phases"] = {}
        for key, script, _, conns in PHASES:
            for c in conns:
                r = wrk_phase(server, script, targets[key], c, args.duration, args.warmup)
                run["phases"][f"{key}_c{c}"] = r
                log(f"  {key} c={c}: {r['requests_per_s']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['server_cpu_us_per_req']} µs CPU/req, errors {r['errors']}")
        log(f"  CRUD cycle, {args.crud_users} users")
        run["crud"] = crud_cycle(server, args.crud_users, args.duration, args.warmup, args.seed + index)
        log(f"  CRUD: {run['crud']['iterations_per_s']} iterations/s, p50 {run['crud']['iteration_p50_ms']} ms, errors {run['crud']['errors']}")
        run["server_log_warnings"] = sum(1 for line in tail(server.log_path, 10**7).splitlines() if "WARN" in line or "ERROR" in line)
    except BaseException:
        server.stop()
        log(f"  the run's directory and server log are kept in {work}")
        raise
    server.stop()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return run


# ----- the report -----


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def summarise(runs):
    by = {"Brankas": [r for r in runs if r["server"] == "Brankas"], "HFS": [r for r in runs if r["server"] == "HFS"]}
    rows = []

    def row(label, unit, get_value, get_cpu, get_flag, extra=None):
        v = {s: mean([get_value(r) for r in rs]) for s, rs in by.items()}
        c = {s: mean([get_cpu(r) for r in rs]) for s, rs in by.items()} if get_cpu else {}
        flags = {s: any(get_flag(r) for r in rs) for s, rs in by.items()}
        e = {s: (extra(rs) if extra and rs else None) for s, rs in by.items()}
        rows.append(
            {
                "workload": label,
                "unit": unit,
                "brankas": v["Brankas"],
                "hfs": v["HFS"],
                "ratio": (v["Brankas"] / v["HFS"]) if v["Brankas"] and v["HFS"] else None,
                "brankas_cpu": c.get("Brankas"),
                "hfs_cpu": c.get("HFS"),
                "cpu_ratio": (c["Brankas"] / c["HFS"]) if c.get("Brankas") and c.get("HFS") else None,
                "flagged": flags,
                "latency": e,
                "per_run": {s: [get_value(r) for r in rs] for s, rs in by.items()},
            }
        )

    row("transaction ingest, 4 clients", "resources/s", lambda r: r["ingest"]["resources_per_s"], lambda r: r["ingest"]["server_cpu_us_per_resource"], lambda r: False,
        lambda rs: f"bundle p50 {mean([r['ingest']['bundle_p50_ms'] for r in rs]):.0f} / p99 {mean([r['ingest']['bundle_p99_ms'] for r in rs]):.0f} ms")
    for key, _, label, conns in PHASES:
        for c in conns:
            k = f"{key}_c{c}"
            row(f"{label}, {c} conn.", "req/s", lambda r, k=k: r["phases"][k]["requests_per_s"], lambda r, k=k: r["phases"][k]["server_cpu_us_per_req"], lambda r, k=k: r["phases"][k]["flagged"],
                lambda rs, k=k: f"p50 {mean([r['phases'][k]['p50_ms'] for r in rs]):.2f} / p99 {mean([r['phases'][k]['p99_ms'] for r in rs]):.2f} ms")
    users = runs[0]["crud"]["users"]
    row(f"CRUD cycle (7 requests), {users} users", "iterations/s", lambda r: r["crud"]["iterations_per_s"], lambda r: r["crud"]["server_cpu_us_per_iteration"], lambda r: r["crud"]["flagged"],
        lambda rs: f"p50 {mean([r['crud']['iteration_p50_ms'] for r in rs]):.0f} / p99 {mean([r['crud']['iteration_p99_ms'] for r in rs]):.0f} ms")
    row("data directory after ingest (du -sb)", "MB", lambda r: r["data_dir_bytes_after_ingest"] / 1e6, None, lambda r: False)
    return rows


def fmt(x, unit):
    if x is None:
        return "n/a"
    if unit == "MB":
        return f"{x:,.1f} MB"
    return f"{x:,.0f} {unit}"


def markdown(result):
    m = result["machine"]
    lines = [
        f"# Brankas against Helios HFS, {result['started'][:10]}",
        "",
        f"Machine: {m['nproc']} CPUs \"{m['cpu_model']}\", {m['mem_gib']} GiB RAM, Linux {m['kernel']}; load average at start / end {m['loadavg_start']} / {m['loadavg_end']}.",
        f"Brankas: `{result['versions']['brankas']}`, commit `{result['versions']['commit']}`, {result['versions']['brankas_build']} build (`{result['config']['brankas']}`).",
        f"HFS: `{result['versions']['hfs']}` (`{result['config']['hfs']}`), SQLite, no auth. wrk: `{result['versions']['wrk']}`; Python {result['versions']['python']}.",
        f"Runs in order: {', '.join(r['server'] for r in result['runs'])}; each figure is the mean of a server's runs. "
        f"{result['config']['bundles']} Synthea bundles ({result['runs'][0]['ingest']['resources']:,} resources); phases {result['config']['warmup']} s warm-up + {result['config']['duration']} s.",
        f"Command: `{result['command']}` (wall time {result['wall_seconds']:.0f} s).",
        "",
        "| workload | Brankas | HFS | Brankas ÷ HFS | Brankas CPU/req ÷ HFS's |",
        "|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        def cell(s, key):
            v = fmt(r[key], r["unit"])
            lat = r["latency"].get(s)
            if lat:
                v += f" ({lat})"
            if r["flagged"].get(s):
                v += " **errors**"
            return v

        ratio = f"{r['ratio']:.2f}×" if r["ratio"] else "n/a"
        cpu = f"{r['cpu_ratio']:.2f}× ({r['brankas_cpu']:,.0f} / {r['hfs_cpu']:,.0f} µs)" if r["cpu_ratio"] else ""
        lines.append(f"| {r['workload']} | {cell('Brankas', 'brankas')} | {cell('HFS', 'hfs')} | {ratio} | {cpu} |")
    errs = [(r["server"], r["order"], k, v["errors"]) for r in result["runs"] for k, v in list(r["phases"].items()) + [("crud", r["crud"])] if v["errors"]]
    lines += ["", "Errors (non-2xx answers or failed connections, per run): " + ("none." if not errs else "; ".join(f"run {o} {s} {k}: {n}" for s, o, k, n in errs))]
    for r in result["runs"]:
        for k, v in r["crud"]["errors_by_status"].items():
            lines.append(f"- run {r['order']} {r['server']} CRUD `{k}` ×{v['count']}: `{v['sample'][:200]}`")
    lines += [
        "",
        "CPU/req is the server process's utime+stime over the measured part of a phase divided by its requests (per resource for the ingest, per iteration for the CRUD cycle).",
        f"Load generator CPU during the CRUD cycle (Python, same machine): {', '.join(str(r['crud']['load_generator_cpu_cores']) for r in result['runs'])} cores.",
        "",
    ]
    return "\n".join(lines)


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem / 2**20, 1), "kernel": platform.release(), "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3])}


def git(*a):
    r = subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True)
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brankas", default=os.path.join(REPO, "target/release/brankas"), help="the brankas binary (default: target/release/brankas)")
    ap.add_argument("--hfs", default=shutil.which("hfs") or "hfs", help="the hfs binary of helios-hfs 0.2.7 (default: hfs on PATH)")
    ap.add_argument("--corpus", default=os.environ.get("BRANKAS_CORPUS", os.path.join(os.path.dirname(REPO), "shared/corpus")), help="the corpus root, holding synthea/ and fhir-r4-search-parameters/ (default: $BRANKAS_CORPUS, else ../shared/corpus)")
    ap.add_argument("--bundles", type=int, default=60, help="Synthea transaction Bundles loaded into each server (the first N by name; default 60)")
    ap.add_argument("--duration", type=int, default=15, help="seconds measured per phase (default 15)")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each phase (default 3)")
    ap.add_argument("--ingest-clients", type=int, default=4, help="concurrent clients of the transaction ingest (default 4)")
    ap.add_argument("--crud-users", type=int, default=32, help="concurrent users of the CRUD cycle (default 32)")
    ap.add_argument("--order", default="brankas,hfs,hfs,brankas", help="comma-separated runs (brankas|hfs)")
    ap.add_argument("--out", default="peer-results", help="where results.json and results.md go (default peer-results)")
    ap.add_argument("--tmp", default=None, help="where the runs' data directories go (default: the system's temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--seed", type=int, default=1, help="seed of the answer checks and the CRUD data")
    ap.add_argument("--brankas-log", default="info", help="BRANKAS_LOG of the server (default info, as in production)")
    ap.add_argument("--hfs-log", default="info", help="--log-level of HFS (default info, its default)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    order = [x.strip().lower() for x in args.order.split(",") if x.strip()]
    if any(x not in ("brankas", "hfs") for x in order):
        raise BenchError("--order takes brankas and hfs")
    synthea = os.path.join(args.corpus, "synthea")
    search_parameters = os.path.join(args.corpus, "fhir-r4-search-parameters", "search-parameters.json")
    if "brankas" in order and not os.access(args.brankas, os.X_OK):
        raise BenchError(f"no Brankas binary at {args.brankas} (build it: cargo build --release --locked -p brankas)")
    if "hfs" in order:
        if not (os.access(args.hfs, os.X_OK) or shutil.which(args.hfs)):
            raise BenchError(f"no HFS binary at {args.hfs} (cargo install helios-hfs --version 0.2.7 --locked --no-default-features --features R4,sqlite)")
        args.hfs = shutil.which(args.hfs) or args.hfs
        if not os.path.isfile(search_parameters):
            raise BenchError(f"no {search_parameters}")
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    os.makedirs(args.out, exist_ok=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    bundles = read_bundles(synthea, args.bundles)
    log(f"{len(bundles)} bundles, {sum(len(b['entries']) for b in bundles)} resources; runs: {', '.join(order)}")
    brankas_path = os.path.realpath(args.brankas)
    result = {
        "started": started.isoformat(timespec="seconds"),
        "command": args.command or " ".join(sys.argv),
        "machine": machine(),
        "config": {k: v for k, v in vars(args).items() if k != "command"},
        "versions": {
            "commit": git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
            "brankas": Brankas(args.brankas, "", "").version() if "brankas" in order else None,
            "brankas_build": "debug" if "/debug/" in brankas_path else ("release" if "/release/" in brankas_path else "unknown"),
            "hfs": Hfs(args.hfs, "", "").version() if "hfs" in order else None,
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
            "python": platform.python_version(),
        },
        "runs": [],
    }
    try:
        for i, kind in enumerate(order):
            result["runs"].append(one_run(kind, args, bundles, i, search_parameters))
    except BaseException:
        result["wall_seconds"] = time.perf_counter() - t0
        with open(os.path.join(args.out, "results.partial.json"), "w") as f:
            json.dump(result, f, indent=1)
        raise
    result["machine"]["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["summary"] = summarise(result["runs"])
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    flagged = [r["workload"] for r in result["summary"] if any(r["flagged"].values())]
    if flagged:
        log(f"phases with errors (see results.md): {flagged}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
