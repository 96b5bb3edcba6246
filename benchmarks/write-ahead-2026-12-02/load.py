#!/usr/bin/env python3
"""Single-resource writes against a running `brankas serve --insecure-http`: N clients, each
POSTing small Observations of its own patient over one keep-alive connection for S seconds
(after a warm-up). Prints one JSON object: writes/s, p50 and p99 latency in ms.

usage: load.py BASE_URL CLIENT_ID CLIENT_SECRET CLIENTS SECONDS
"""
import base64, http.client, json, sys, threading, time, urllib.parse

base, cid, secret, clients, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
u = urllib.parse.urlparse(base)

def conn():
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)

def call(c, method, path, body=None, token=None, ctype="application/fhir+json", auth=None):
    h = {}
    if token:
        h["Authorization"] = "Bearer " + token
    if auth:
        h["Authorization"] = auth
    if body is not None:
        h["Content-Type"] = ctype
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    return r.status, r.read()

c0 = conn()
basic = "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()
st, b = call(c0, "POST", "/auth/token", b"grant_type=client_credentials", ctype="application/x-www-form-urlencoded", auth=basic)
assert st == 200, b
token = json.loads(b)["access_token"]

def patient(i):
    nik = "31710547089%05d" % (1000 + i)
    return json.dumps({"resourceType": "Patient", "identifier": [{"system": "https://fhir.kemkes.go.id/id/nik", "value": nik}],
                       "name": [{"family": "Beban%d" % i}], "gender": "female", "birthDate": "1990-08-07"}).encode()

pids = []
for i in range(clients):
    st, b = call(c0, "POST", "/fhir/Patient", patient(i), token)
    assert st == 201, b
    pids.append(json.loads(b)["id"])

lat, lock, stop, measuring = [], threading.Lock(), threading.Event(), threading.Event()

def run(pid):
    c = conn()
    body = json.dumps({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                       "subject": {"reference": "Patient/" + pid}, "valueQuantity": {"value": 7.2, "unit": "mmol/L"}}).encode()
    mine = []
    while not stop.is_set():
        t = time.perf_counter()
        st, b = call(c, "POST", "/fhir/Observation", body, token)
        assert st == 201, b
        if measuring.is_set():
            mine.append(time.perf_counter() - t)
    with lock:
        lat.extend(mine)

threads = [threading.Thread(target=run, args=(p,)) for p in pids]
for t in threads:
    t.start()
time.sleep(2)
measuring.set()
start = time.perf_counter()
time.sleep(seconds)
measuring.clear()
elapsed = time.perf_counter() - start
stop.set()
for t in threads:
    t.join()
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)
print(json.dumps({"clients": clients, "writes": len(lat), "writes_per_s": round(len(lat) / elapsed, 1), "p50_ms": q(0.5), "p99_ms": q(0.99)}))
