#!/usr/bin/env python3
"""The same server on its embedded SQLite store and on PostgreSQL, one run, same machine.

    run.py BRANKAS_BIN DATABASE_URL [BUNDLES] [THREADS] [SECONDS]

For each backend: `brankas init` (with `--database DATABASE_URL --database-schema <fresh>`
for PostgreSQL), a facility client whose limits are out of the way, `serve --insecure-http`.
Then: BUNDLES Synthea transaction Bundles from ../shared/corpus/synthea POSTed by 4 threads
(resources/s); 200 patients with valid NIKs; THREADS threads for SECONDS each: a read by id,
a NIK lookup, a page of 20 of one patient's Observations. One JSON line per phase: requests/s,
p50/p99 latency, CPU per request of the brankas process and, for PostgreSQL, of the database
server's processes (read from /proc).
"""
import glob, http.client, json, os, subprocess, sys, tempfile, threading, time

BIN, URL = sys.argv[1], sys.argv[2]
BUNDLES = int(sys.argv[3]) if len(sys.argv) > 3 else 40
THREADS = int(sys.argv[4]) if len(sys.argv) > 4 else 8
SECONDS = float(sys.argv[5]) if len(sys.argv) > 5 else 5
NIK = "https://fhir.kemkes.go.id/id/nik"
CORPUS = os.environ.get("BRANKAS_CORPUS", os.path.join(os.path.dirname(__file__), "../../../shared/corpus"))
files = sorted(glob.glob(os.path.join(CORPUS, "synthea", "*.json")))[:BUNDLES]
bundles = [open(f, "rb").read() for f in files]


def cpu_of(pids):
    t = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except OSError:
            pass
    return t / os.sysconf("SC_CLK_TCK")


def postgres_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and open(f"/proc/{p}/comm").read().strip() == "postgres"]


def run_backend(name):
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    extra = ["--database", URL, "--database-schema", f"bench_{os.getpid()}_{int(time.time())}"] if name == "postgres" else []
    run = lambda *a: subprocess.run([BIN, *a, *extra], check=True, capture_output=True, text=True).stdout
    json.loads(run("init", "--data-dir", data, "--key-file", os.path.join(tmp, "k.key")))
    kf = ["--data-dir", data, "--key-file", os.path.join(tmp, "k.key")]
    officer = json.loads(run("clients", "create", *kf, "--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"))
    c = json.loads(run("clients", "create", *kf, "--name", "bench", "--role", "facility-system", "--organization", "Organization/fac-0001",
                       "--scopes", "system/*.cruds", "--budget-per-hour", "100000000", "--budget-per-day", "100000000", "--rate-per-second", "1000000",
                       "--burst", "1000000", "--max-concurrent", "100000", "--max-page", "500"))
    secret_file = os.path.join(tmp, "officer-secret")
    open(secret_file, "w").write(officer["client_secret"])
    run("clients", "approve", c["client_id"], "--approver-id", officer["client_id"], "--approver-secret-file", secret_file, *kf)
    srv = subprocess.Popen([BIN, "serve", *kf, *extra, "--listen", "127.0.0.1:0", "--insecure-http", "--max-connections-per-address", "4096"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "BRANKAS_LOG": "warn"}, text=True)
    url = json.loads(srv.stdout.readline())["url"]
    host, port = url.split("//")[1].split("/")[0].split(":")
    port = int(port)
    conn = lambda: http.client.HTTPConnection(host, port, timeout=300)
    h = conn()
    h.request("POST", "/auth/token", body=f"grant_type=client_credentials&client_id={c['client_id']}&client_secret={c['client_secret']}",
              headers={"Content-Type": "application/x-www-form-urlencoded"})
    token = json.loads(h.getresponse().read())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}

    def call(h, method, path, body=None):
        hd = dict(auth)
        if body is not None:
            hd["Content-Type"] = "application/fhir+json"
        h.request(method, path if path.startswith("/") else "/fhir/" + path, body=body, headers=hd)
        r = h.getresponse()
        return r.status, r.read()

    pids = lambda: [srv.pid]
    db = lambda: postgres_pids() if name == "postgres" else []
    out = []
    try:
        # Ingest.
        queue = list(bundles)
        lock = threading.Lock()
        resources = [0]

        def ingest():
            h = conn()
            while True:
                with lock:
                    if not queue:
                        return
                    b = queue.pop()
                st, body = call(h, "POST", "/fhir", b)
                assert st == 200, body[:300]
                with lock:
                    resources[0] += len(json.loads(body)["entry"])
        c0, d0, t0 = cpu_of(pids()), cpu_of(db()), time.time()
        ts = [threading.Thread(target=ingest) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        secs = time.time() - t0
        out.append({"backend": name, "phase": "ingest (Synthea transactions, 4 clients)", "resources": resources[0], "seconds": round(secs, 2),
                    "resources_per_s": round(resources[0] / secs), "brankas_cpu_s": round(cpu_of(pids()) - c0, 1), "postgres_cpu_s": round(cpu_of(db()) - d0, 1)})
        print(json.dumps(out[-1]), flush=True)
        # Patients with NIKs, each with 20 results.
        people = []
        h = conn()
        for i in range(THREADS):
            nik = f"317105470890{i + 1:04d}"
            st, body = call(h, "POST", "Patient", json.dumps({"resourceType": "Patient", "identifier": [{"system": NIK, "value": nik}], "gender": "female",
                                                              "birthDate": "1990-08-07", "name": [{"family": f"Bench{i}"}]}))
            assert st == 201, body
            pid = json.loads(body)["id"]
            oids = []
            for j in range(20):
                st, body = call(h, "POST", "Observation", json.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "nadi"},
                                                                        "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 60 + j}}))
                assert st == 201, body
                oids.append(json.loads(body)["id"])
            people.append((pid, nik, oids))
        shapes = {
            "read by id": lambda p: f"Observation/{p[2][0]}",
            "NIK lookup": lambda p: f"Patient?identifier={NIK}|{p[1]}",
            "compartment search, page of 20": lambda p: f"Observation?patient={p[0]}&_count=20",
        }
        for _ in range(2):
            for kind, path_of in shapes.items():
                lat, stop, errors = [], time.time() + SECONDS, [0]

                def worker(p):
                    h = conn()
                    path = path_of(p)
                    while time.time() < stop:
                        t = time.perf_counter()
                        st, _ = call(h, "GET", path)
                        lat.append(time.perf_counter() - t)
                        if st != 200:
                            errors[0] += 1
                c0, d0 = cpu_of(pids()), cpu_of(db())
                ts = [threading.Thread(target=worker, args=(p,)) for p in people]
                [t.start() for t in ts]
                [t.join() for t in ts]
                n = len(lat)
                lat.sort()
                out.append({"backend": name, "phase": kind, "threads": THREADS, "requests_per_s": round(n / SECONDS), "p50_ms": round(lat[n // 2] * 1e3, 2),
                            "p99_ms": round(lat[int(n * 0.99)] * 1e3, 2), "brankas_cpu_us": round((cpu_of(pids()) - c0) / n * 1e6),
                            "postgres_cpu_us": round((cpu_of(db()) - d0) / n * 1e6), "errors": errors[0]})
                print(json.dumps(out[-1]), flush=True)
    finally:
        srv.terminate()
        srv.wait()
    return out


for backend in ("sqlite", "postgres"):
    run_backend(backend)
