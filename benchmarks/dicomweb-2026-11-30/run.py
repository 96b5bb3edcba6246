#!/usr/bin/env python3
"""DICOMweb: Brankas against Orthanc (Debian's orthanc + orthanc-dicomweb) on one machine.

Both servers get the same instances: pydicom's CT_small.dcm rewritten N times with new SOP
Instance UIDs (one study, one series, PatientID = a NIK), sent by STOW-RS in requests of
--batch instances; then the study is retrieved whole by WADO-RS, the instance metadata of the
study read, and the patient's studies searched by QIDO-RS, by one client. Runs alternate
A B B A. Orthanc runs with its defaults (files stored in the clear, no authentication, loopback
only); Brankas with its (every instance sealed under the patient's key, authorised, audited).

    python3 benchmarks/dicomweb-2026-11-30/run.py --brankas target/release/brankas --out result.json

needs: the venv of tests/python (pydicom, requests), /usr/sbin/Orthanc with libOrthancDicomWeb.
"""
import argparse, io, json, os, shutil, subprocess, sys, tempfile, time

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NIK = "3171054708900003"
BOUNDARY = "bench-boundary-7f3a"


def instances(n):
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        d = src.copy()
        d.PatientID = NIK
        d.StudyInstanceUID, d.SeriesInstanceUID = study, series
        u = generate_uid()
        d.SOPInstanceUID = u
        d.file_meta.MediaStorageSOPInstanceUID = u
        d.InstanceNumber = i + 1
        b = io.BytesIO()
        d.save_as(b)
        out.append(b.getvalue())
    return study, out


def multipart(parts):
    body = bytearray()
    for p in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return bytes(body)


class Brankas:
    name = "brankas"

    def __init__(self, binary, work):
        self.work = work
        data, key = os.path.join(work, "data"), os.path.join(work, "master.key")
        subprocess.run([binary, "init", "--data-dir", data, "--key-file", key], check=True, capture_output=True)
        c = subprocess.run([binary, "clients", "create", "--name", "bench", "--role", "facility-system", "--organization", "Organization/b",
                            "--scopes", "system/*.cruds", "--budget-per-hour", "100000000", "--budget-per-day", "100000000",
                            "--rate-per-second", "1000000", "--burst", "1000000", "--max-concurrent", "100000",
                            "--data-dir", data, "--key-file", key], check=True, capture_output=True)
        creds = json.loads(c.stdout)
        self.proc = subprocess.Popen([binary, "serve", "--data-dir", data, "--key-file", key, "--listen", "127.0.0.1:0", "--insecure-http"],
                                     stdout=subprocess.PIPE, stderr=open(os.path.join(work, "server.log"), "w"), env={**os.environ, "BRANKAS_LOG": "warn"})
        fhir = json.loads(self.proc.stdout.readline())["url"]
        self.root = fhir[: -len("/fhir")]
        self.base = self.root + "/dicomweb"
        tok = requests.post(self.root + "/auth/token", auth=(creds["client_id"], creds["client_secret"]), data={"grant_type": "client_credentials"}).json()
        self.s = requests.Session()
        self.s.headers["Authorization"] = "Bearer " + tok["access_token"]
        p = {"resourceType": "Patient", "identifier": [{"system": "https://fhir.kemkes.go.id/id/nik", "value": NIK}],
             "name": [{"family": "Lestari"}], "gender": "female", "birthDate": "1990-08-07"}
        r = self.s.post(fhir + "/Patient", data=json.dumps(p), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text

    def pid(self):
        return self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Orthanc:
    name = "orthanc"

    def __init__(self, work):
        cfg = {"Name": "bench", "StorageDirectory": os.path.join(work, "storage"), "IndexDirectory": os.path.join(work, "index"),
               "HttpPort": 18042, "DicomPort": 14242, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
               "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "orthanc.json"), "w") as f:
            json.dump(cfg, f)
        self.proc = subprocess.Popen(["/usr/sbin/Orthanc", os.path.join(work, "orthanc.json")], stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "orthanc.log"), "w"))
        self.base = "http://127.0.0.1:18042/dicom-web"
        self.s = requests.Session()
        for _ in range(200):
            try:
                if requests.get("http://127.0.0.1:18042/system").status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)

    def pid(self):
        return self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0


def measure(server, study, data, batch, qido_n):
    ct = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    bodies = [multipart(data[i:i + batch]) for i in range(0, len(data), batch)]
    t = time.perf_counter()
    for b in bodies:
        r = server.s.post(server.base + "/studies", data=b, headers={"Content-Type": ct, "Accept": "application/dicom+json"})
        assert r.status_code == 200, (server.name, r.status_code, r.text[:300])
    stow = time.perf_counter() - t
    t = time.perf_counter()
    r = server.s.get(f"{server.base}/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200, (server.name, r.status_code)
    body = r.content
    wado = time.perf_counter() - t
    got = sum(1 for d in data if d in body) if len(data) <= 50 else None
    t = time.perf_counter()
    r = server.s.get(f"{server.base}/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200 and len(r.json()) == len(data), (server.name, r.status_code)
    meta = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(qido_n):
        r = server.s.get(f"{server.base}/studies", params={"PatientID": NIK}, headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200 and len(r.json()) == 1, (server.name, r.status_code, r.text[:200])
    qido = time.perf_counter() - t
    mib = sum(len(d) for d in data) / 2**20
    return {"stow_instances_per_s": round(len(data) / stow, 1), "stow_mib_s": round(mib / stow, 1),
            "wado_study_seconds": round(wado, 3), "wado_mib_s": round(len(body) / 2**20 / wado, 1),
            "metadata_seconds": round(meta, 3), "qido_ms": round(qido * 1000 / qido_n, 2), "checked_instances": got,
            "server_rss_mib": round(rss_mib(server.pid()), 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brankas", default="target/release/brankas")
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--qido", type=int, default=200)
    ap.add_argument("--out", default="dicomweb-bench.json")
    a = ap.parse_args()
    results = {"command": " ".join(sys.argv), "instances": a.instances, "batch": a.batch, "instance_bytes": None, "runs": []}
    for order, which in enumerate(["brankas", "orthanc", "orthanc", "brankas"]):
        work = tempfile.mkdtemp(prefix=f"dw-{which}-")
        study, data = instances(a.instances)
        results["instance_bytes"] = len(data[0])
        server = Brankas(os.path.abspath(a.brankas), work) if which == "brankas" else Orthanc(work)
        try:
            r = measure(server, study, data, a.batch, a.qido)
        finally:
            server.stop()
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(work) for f in fs)
        r.update({"server": which, "order": order, "work_dir_bytes": size})
        print(json.dumps(r), file=sys.stderr)
        results["runs"].append(r)
        shutil.rmtree(work, ignore_errors=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
