import json, statistics as st, sys
D = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/guard-2026-11-30"
keys = [("http_ingest","resources_per_s","HTTP ingest, resources/s"),
        ("read_by_id_1_client","requests_per_s","read by id, 1 client, req/s"),
        ("read_by_id","requests_per_s","read by id, 16 clients, req/s"),
        ("compartment_search","requests_per_s","compartment search, 16 clients, req/s"),
        ("everything","requests_per_s","$everything, 16 clients, req/s"),
        ("nik_lookup_1_client","requests_per_s","NIK lookup, 1 client, req/s"),
        ("nik_lookup","requests_per_s","NIK lookup, 16 clients, req/s"),
        ("nik_create","patients_per_s","create patients (tx of 250), patients/s"),
        ("http_floor_health","requests_per_s","GET /health (HTTP floor), req/s")]
runs = {n: [json.load(open(f"{D}/{n}-{i}.json")) for i in (1,2)] for n in "CD"}
print("| measurement | C audit, fa76a55 (runs) | D + guard (runs) | D/C |")
print("|---|---|---|---|")
for k,f,label in keys:
    vals = {n: [r[k][f] for r in runs[n]] for n in "CD"}
    m = {n: st.mean(vals[n]) for n in "CD"}
    fmt = lambda n: f"{m[n]:,.0f} ({', '.join(f'{v:,.0f}' for v in vals[n])})"
    print(f"| {label} | {fmt('C')} | {fmt('D')} | {m['D']/m['C']:.2f}× |")
print()
for k in ["read_by_id","read_by_id_1_client","nik_lookup_1_client"]:
    print(k, {n: [ (r[k]['latency_ms']['p50'], r[k]['latency_ms']['p99'], r[k]['server_cpu_us_per_request']) for r in runs[n]] for n in "CD"})
