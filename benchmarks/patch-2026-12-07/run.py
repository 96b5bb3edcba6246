#!/usr/bin/env python3
"""PATCH against PUT and GET on one server: N threads, each with its own Patient, for S seconds
per phase, phases alternated (PUT, PATCH json-patch, PATCH merge, GET, and again).

    run.py BRANKAS_BIN [THREADS] [SECONDS]

Starts `brankas init` + `serve --insecure-http` in a temporary directory with a facility client
whose budgets and limits are out of the way, and prints one JSON line per phase: requests/s,
p50/p99 latency, server CPU per request (utime + stime from /proc)."""
import http.client, json, os, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 5

tmp = tempfile.mkdtemp()
data = os.path.join(tmp, "data")
run = lambda *a: subprocess.run([BIN, *a], check=True, capture_output=True, text=True).stdout
admin = json.loads(run("init", "--data-dir", data))
officer = json.loads(run("clients", "create", "--data-dir", data, "--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"))
c = json.loads(run("clients", "create", "--data-dir", data, "--name", "bench", "--role", "facility-system", "--organization", "Organization/fac-0001",
                   "--scopes", "system/*.cruds", "--budget-per-hour", "100000000", "--budget-per-day", "100000000", "--rate-per-second", "1000000",
                   "--burst", "1000000", "--max-concurrent", "100000"))
secret_file = os.path.join(tmp, "officer-secret")
open(secret_file, "w").write(officer["client_secret"])
run("clients", "approve", c["client_id"], "--approver-id", officer["client_id"], "--approver-secret-file", secret_file, "--data-dir", data)
srv = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--insecure-http", "--max-connections-per-address", "4096"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BRANKAS_LOG": "warn"}, text=True)
url = json.loads(srv.stdout.readline())["url"]
host, port = url.split("//")[1].split("/")[0].split(":")
port = int(port)

def conn():
    return http.client.HTTPConnection(host, port, timeout=60)

h = conn()
h.request("POST", "/auth/token", body=f"grant_type=client_credentials&client_id={c['client_id']}&client_secret={c['client_secret']}",
          headers={"Content-Type": "application/x-www-form-urlencoded"})
token = json.loads(h.getresponse().read())["access_token"]
auth = {"Authorization": f"Bearer {token}"}

def call(h, method, path, body=None, ctype="application/fhir+json"):
    hd = dict(auth)
    if body is not None:
        hd["Content-Type"] = ctype
        body = json.dumps(body)
    h.request(method, "/fhir/" + path, body=body, headers=hd)
    r = h.getresponse()
    out = r.read()
    return r.status, out

patients = []
for i in range(THREADS):
    st, out = call(h, "POST", "Patient", {"resourceType": "Patient", "gender": "female", "birthDate": "1990-08-07",
                                          "name": [{"family": f"Bench{i}", "given": ["Siti"]}], "active": True})
    assert st == 201, out
    patients.append(json.loads(out))

def phase(kind):
    lat, errors, stop = [], [0], time.time() + SECONDS
    def worker(p):
        h = conn()
        n = 0
        while time.time() < stop:
            n += 1
            pid = p["id"]
            t = time.perf_counter()
            if kind == "PUT":
                p["active"] = n % 2 == 0
                st, out = call(h, "PUT", f"Patient/{pid}", p)
                if st == 200:
                    p = json.loads(out)
            elif kind == "PATCH json-patch":
                st, _ = call(h, "PATCH", f"Patient/{pid}", [{"op": "replace", "path": "/active", "value": n % 2 == 0}], "application/json-patch+json")
            elif kind == "PATCH merge":
                st, _ = call(h, "PATCH", f"Patient/{pid}", {"active": n % 2 == 0}, "application/merge-patch+json")
            else:
                st, _ = call(h, "GET", f"Patient/{pid}")
            lat.append(time.perf_counter() - t)
            if st >= 400:
                errors[0] += 1
    c0 = cpu()
    ts = [threading.Thread(target=worker, args=(dict(p),)) for p in patients]
    [t.start() for t in ts]
    [t.join() for t in ts]
    c1 = cpu()
    lat.sort()
    n = len(lat)
    print(json.dumps({"phase": kind, "threads": THREADS, "requests_per_s": round(n / SECONDS, 1), "p50_ms": round(lat[n // 2] * 1e3, 2),
                      "p99_ms": round(lat[int(n * 0.99)] * 1e3, 2), "server_cpu_us_per_request": round((c1 - c0) / n * 1e6), "errors": errors[0]}), flush=True)

def cpu():
    f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

try:
    for _ in range(2):
        for k in ["PUT", "PATCH json-patch", "PATCH merge", "GET"]:
            phase(k)
finally:
    srv.terminate()
    srv.wait()
