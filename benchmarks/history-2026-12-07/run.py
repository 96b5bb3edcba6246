#!/usr/bin/env python3
"""Type and system history against a search and an instance history, one server.

    run.py BRANKAS_BIN [THREADS] [SECONDS] [BIG]

Starts `brankas init` + `serve --insecure-http` in a temporary directory with a facility client
whose budgets and limits are out of the way. Each of THREADS patients gets 20 results, each
updated once (40 versions). Phases alternate (twice): a page of 20 results (search), the
first page of 20 of the record's Observation history, of its system history, one result's
history. One JSON line per phase: requests/s, p50/p99 latency, server CPU per request.

Then one patient with BIG results (default 5,000), each updated once: the time to walk the
Observation history (2 × BIG versions) in pages of 50, 200 and 500, its first page, and an
`_at` window (the walk of the whole record), against a search page of the same size."""
import http.client, json, os, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 5
BIG = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
NIK = "https://fhir.kemkes.go.id/id/nik"

tmp = tempfile.mkdtemp()
data = os.path.join(tmp, "data")
run = lambda *a: subprocess.run([BIN, *a], check=True, capture_output=True, text=True).stdout
json.loads(run("init", "--data-dir", data))
officer = json.loads(run("clients", "create", "--data-dir", data, "--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"))
c = json.loads(run("clients", "create", "--data-dir", data, "--name", "bench", "--role", "facility-system", "--organization", "Organization/fac-0001",
                   "--scopes", "system/*.cruds", "--budget-per-hour", "100000000", "--budget-per-day", "100000000", "--rate-per-second", "1000000",
                   "--burst", "1000000", "--max-concurrent", "100000", "--max-page", "500"))
secret_file = os.path.join(tmp, "officer-secret")
open(secret_file, "w").write(officer["client_secret"])
run("clients", "approve", c["client_id"], "--approver-id", officer["client_id"], "--approver-secret-file", secret_file, "--data-dir", data)
srv = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--insecure-http", "--max-connections-per-address", "4096"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BRANKAS_LOG": "warn"}, text=True)
url = json.loads(srv.stdout.readline())["url"]
host, port = url.split("//")[1].split("/")[0].split(":")
port = int(port)


def conn():
    return http.client.HTTPConnection(host, port, timeout=300)


h = conn()
h.request("POST", "/auth/token", body=f"grant_type=client_credentials&client_id={c['client_id']}&client_secret={c['client_secret']}",
          headers={"Content-Type": "application/x-www-form-urlencoded"})
token = json.loads(h.getresponse().read())["access_token"]
auth = {"Authorization": f"Bearer {token}"}


def call(h, method, path, body=None):
    hd = dict(auth)
    if body is not None:
        hd["Content-Type"] = "application/fhir+json"
        body = json.dumps(body)
    h.request(method, path if path.startswith("/") else "/fhir/" + path, body=body, headers=hd)
    r = h.getresponse()
    return r.status, r.read()


def create(h, r):
    st, out = call(h, "POST", r["resourceType"], r)
    assert st == 201, out
    return json.loads(out)["id"]


def nik(i):
    # A woman born on 7 Aug 1990 in Jakarta; serial i+1.
    return f"317105470890{i + 1:04d}"


def obs(pid, doc, enc, i):
    return {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{pid}"}, "performer": [{"reference": f"Practitioner/{doc}"}], "encounter": {"reference": f"Encounter/{enc}"},
            "effectiveDateTime": f"2026-11-{1 + i % 28:02d}T08:00:00+07:00", "valueQuantity": {"value": 60 + i % 40, "unit": "/min"}}



def obs(pid, i, status="final"):
    return {"resourceType": "Observation", "status": status, "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2026-11-{1 + i % 28:02d}T08:00:00+07:00", "valueQuantity": {"value": 60 + i % 40, "unit": "/min"}}


def record(h, n):
    """A patient with n results, each written and then amended (transactions of 500)."""
    pid = create(h, {"resourceType": "Patient", "gender": "female", "birthDate": "1990-08-07", "name": [{"family": "Bench"}]})
    ids = []
    for start in range(0, n, 500):
        st, out = call(h, "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": obs(pid, j), "request": {"method": "POST", "url": "Observation"}} for j in range(start, min(n, start + 500))]})
        assert st == 200, out[:300]
        ids += [e["response"]["location"].split("/")[1] for e in json.loads(out)["entry"]]
    for start in range(0, n, 500):
        st, out = call(h, "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {**obs(pid, j, "amended"), "id": ids[j]}, "request": {"method": "PUT", "url": f"Observation/{ids[j]}"}} for j in range(start, min(n, start + 500))]})
        assert st == 200, out[:300]
    return pid, ids


people = [record(h, 20) for _ in range(THREADS)]

SHAPES = {
    "search, page of 20": lambda p: f"Observation?patient={p[0]}&_count=20",
    "Observation history of the record, page of 20": lambda p: f"Observation/_history?patient={p[0]}&_count=20",
    "system history of the record, page of 20": lambda p: f"_history?patient={p[0]}&_count=20",
    "one result's history (2 versions)": lambda p: f"Observation/{p[1][0]}/_history",
}


def cpu():
    f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def phase(kind):
    lat, errors, stop = [], [0], time.time() + SECONDS
    size = [0]

    def worker(p):
        h = conn()
        path = SHAPES[kind](p)
        while time.time() < stop:
            t = time.perf_counter()
            st, out = call(h, "GET", path)
            lat.append(time.perf_counter() - t)
            size[0] = len(out)
            if st >= 400:
                errors[0] += 1
    c0 = cpu()
    ts = [threading.Thread(target=worker, args=(p,)) for p in people]
    [t.start() for t in ts]
    [t.join() for t in ts]
    c1 = cpu()
    lat.sort()
    n = len(lat)
    print(json.dumps({"phase": kind, "threads": THREADS, "requests_per_s": round(n / SECONDS, 1), "p50_ms": round(lat[n // 2] * 1e3, 2),
                      "p99_ms": round(lat[int(n * 0.99)] * 1e3, 2), "server_cpu_us_per_request": round((c1 - c0) / n * 1e6), "answer_bytes": size[0],
                      "errors": errors[0]}), flush=True)


def walk(h, first):
    t = time.perf_counter()
    st, out = call(h, "GET", first)
    assert st == 200, out
    b = json.loads(out)
    pages, got = 1, len(b.get("entry", []))
    while True:
        nxt = [l["url"] for l in b.get("link", []) if l["relation"] == "next"]
        if not nxt:
            break
        st, out = call(h, "GET", "/" + nxt[0].split("/", 3)[3])
        assert st == 200, out
        b = json.loads(out)
        pages += 1
        got += len(b.get("entry", []))
    return time.perf_counter() - t, pages, got


try:
    for _ in range(2):
        for k in SHAPES:
            phase(k)
    # One large record.
    h = conn()
    t = time.perf_counter()
    pid, ids = record(h, BIG)
    print(json.dumps({"big_record_written_s": round(time.perf_counter() - t, 1)}), flush=True)
    st, out = call(h, "GET", f"Observation/{ids[BIG // 2]}")
    mid = json.loads(out)["meta"]["lastUpdated"]
    for count in (50, 200, 500):
        secs, pages, got = walk(h, f"Observation/_history?patient={pid}&_count={count}")
        t = time.perf_counter()
        call(h, "GET", f"Observation/_history?patient={pid}&_count={count}")
        one = time.perf_counter() - t
        t = time.perf_counter()
        call(h, "GET", f"Observation?patient={pid}&_count={count}")
        search = time.perf_counter() - t
        t = time.perf_counter()
        st, out = call(h, "GET", f"Observation/_history?patient={pid}&_count={count}&_at={mid.replace('+', '%2B')}")
        assert st == 200, out[:300]
        at = time.perf_counter() - t
        print(json.dumps({"big_record_versions": 2 * BIG + 1, "page": count, "pages": pages, "versions": got, "walk_s": round(secs, 2),
                          "first_page_ms": round(one * 1e3, 1), "at_window_first_page_ms": round(at * 1e3, 1), "search_page_ms": round(search * 1e3, 1)}), flush=True)
finally:
    srv.terminate()
    srv.wait()
