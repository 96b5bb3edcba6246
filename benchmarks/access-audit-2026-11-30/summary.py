import json, statistics as st
keys = [("import","resources_per_s","offline import, resources/s"),
        ("http_ingest","resources_per_s","HTTP ingest, resources/s"),
        ("read_by_id_1_client","requests_per_s","read by id, 1 client, req/s"),
        ("read_by_id","requests_per_s","read by id, 16 clients, req/s"),
        ("compartment_search","requests_per_s","compartment search, 16 clients, req/s"),
        ("everything","requests_per_s","$everything, 16 clients, req/s"),
        ("nik_lookup_1_client","requests_per_s","NIK lookup, 1 client, req/s"),
        ("nik_lookup","requests_per_s","NIK lookup, 16 clients, req/s"),
        ("nik_create","patients_per_s","create patients (tx of 250), patients/s"),
        ("http_floor_health","requests_per_s","GET /health (HTTP floor), req/s")]
runs = {}
for n in "ABC":
    runs[n] = [json.load(open(f"benchmarks/access-audit-2026-11-30/{n}-{i}.json")) for i in (1,2)]
def get(d, k, f):
    v = d.get(k, {})
    return v.get(f)
print("| measurement | A 59ba2bf (runs) | B access control (runs) | C + audit (runs) | B/A | C/B | C/A |")
print("|---|---|---|---|---|---|---|")
for k,f,label in keys:
    vals = {n: [get(r,k,f) for r in runs[n]] for n in "ABC"}
    if any(v is None for n in "ABC" for v in vals[n]): 
        print("skip", k); continue
    m = {n: st.mean(vals[n]) for n in "ABC"}
    fmt = lambda n: f"{m[n]:,.0f} ({', '.join(f'{v:,.0f}' for v in vals[n])})"
    print(f"| {label} | {fmt('A')} | {fmt('B')} | {fmt('C')} | {m['B']/m['A']:.2f}× | {m['C']/m['B']:.2f}× | {m['C']/m['A']:.2f}× |")
lat = [("read_by_id","read by id, 16 clients"),("read_by_id_1_client","read by id, 1 client"),("compartment_search","compartment search, 16 clients"),("nik_lookup_1_client","NIK lookup, 1 client")]
print()
print("| latency p50 / p99 (ms) | A | B | C |")
print("|---|---|---|---|")
for k,label in lat:
    row=[]
    for n in "ABC":
        p50 = st.mean(r[k]["latency_ms"]["p50"] for r in runs[n]); p99 = st.mean(r[k]["latency_ms"]["p99"] for r in runs[n])
        row.append(f"{p50:.2f} / {p99:.2f}")
    print(f"| {label} | " + " | ".join(row) + " |")
print()
for n in "ABC":
    for i,r in enumerate(runs[n]):
        cpu = r["read_by_id"].get("server_cpu_us_per_request")
        print(n, i+1, "read cpu us/req", cpu, "import data dir", r["import"].get("data_dir_bytes"), "audit", r.get("audit_verify"), "load", r["machine"]["loadavg_at_start"], r["machine"].get("loadavg_at_end"), "wall", r.get("wall_seconds"))
