"""Every answer is valid R4: the responses of a realistic session (writes, reads, searches
with includes, $everything pages, history, transactions and batches, PATCH, errors, the
CapabilityStatement, $validate, $meta) are parsed by fhir.resources 6.4 (its R4 models,
pydantic 1), which refuses unknown elements, wrong types and missing mandatory elements.
"""

import base64
import json

import pytest
import requests
from fhir.resources import construct_fhir_element

NIK_SYSTEM = "https://fhir.kemkes.go.id/id/nik"


class Session:
    def __init__(self, server):
        self.url = server["url"]
        self.headers = {"Authorization": f"Bearer {server['token']}", "Accept": "application/fhir+json"}
        self.checked = 0

    def call(self, method, path, body=None, ctype="application/fhir+json", expect=None):
        h = dict(self.headers)
        data = None
        if body is not None:
            h["Content-Type"] = ctype
            data = json.dumps(body)
        r = requests.request(method, f"{self.url}/{path}", headers=h, data=data, timeout=60)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
        if r.content:
            v = r.json()
            # The R4 model of its type: raises on anything that is not valid R4.
            construct_fhir_element(v["resourceType"], v)
            self.checked += 1
            return v
        return None

    def call_with_next_page(self, path):
        """GET a Bundle and, when it has a next link, its next page: both must be valid R4."""
        b = self.call("GET", path, expect=200)
        nxt = [link["url"] for link in b.get("link", []) if link["relation"] == "next"]
        if nxt:
            r = requests.get(nxt[0], headers=self.headers, timeout=60)
            assert r.status_code == 200, r.text
            construct_fhir_element("Bundle", r.json())
            self.checked += 1


@pytest.fixture(scope="module")
def s(server):
    return Session(server)


def test_every_answer_parses_as_r4(s):
    nik = "3171054708900003"
    p = s.call("POST", "Patient", {"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}], "gender": "female",
                                   "birthDate": "1990-08-07", "name": [{"family": "Rahayu", "given": ["Siti"]}],
                                   "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Siti Rahayu</div>"}}, expect=201)
    pid = p["id"]
    doc = s.call("POST", "Practitioner", {"resourceType": "Practitioner", "name": [{"family": "Wijaya", "prefix": ["dr."]}]}, expect=201)
    enc = s.call("POST", "Encounter", {"resourceType": "Encounter", "status": "finished",
                                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                                       "subject": {"reference": f"Patient/{pid}"}}, expect=201)
    obs_ids = []
    for i in range(3):
        o = s.call("POST", "Observation", {"resourceType": "Observation", "status": "final",
                                           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                                           "subject": {"reference": f"Patient/{pid}"}, "encounter": {"reference": f"Encounter/{enc['id']}"},
                                           "performer": [{"reference": f"Practitioner/{doc['id']}"}], "effectiveDateTime": f"2026-11-0{i + 1}T08:00:00+07:00",
                                           "valueQuantity": {"value": 80 + i, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
                                           "note": [{"text": "catatan"}]}, expect=201)
        obs_ids.append(o["id"])
    oid = obs_ids[0]
    # Reads, trimmed reads, version reads, history.
    for path in [f"Patient/{pid}", f"Observation/{oid}", f"Observation/{oid}/_history/1", f"Observation/{oid}/_history",
                 f"Observation/{oid}?_summary=true", f"Observation/{oid}?_summary=text", f"Observation/{oid}?_elements=note",
                 f"Patient/{pid}?_summary=true", f"Patient/{pid}/$meta"]:
        s.call("GET", path, expect=200)
    # Searches: identity, clinical, includes, chains, _has, counts, summaries, $everything pages.
    bundle_paths = [
        f"Patient?identifier={NIK_SYSTEM}|{nik}",
        f"Patient?identifier={NIK_SYSTEM}|{nik}&_revinclude=Observation:subject&_include:iterate=Observation:performer",
        f"Patient?identifier={NIK_SYSTEM}|{nik}&_has:Observation:patient:code=8867-4",
        f"Observation?patient={pid}&_include=Observation:encounter&_include=Observation:performer",
        f"Observation?subject.identifier={NIK_SYSTEM}|{nik}&_count=1",
        f"Observation?patient={pid}&_summary=count",
        f"Observation?patient={pid}&_summary=text",
        f"Observation?patient={pid}&_summary=true",
        f"Observation?patient={pid}&_elements=valueQuantity",
        f"Observation?patient={pid}&unknown-param=1",
        f"Patient/{pid}/Observation?_sort=-date",
        f"Patient/{pid}/$everything?_count=2",
        f"Patient/{pid}/$everything?_type=Observation&_since=2020-01-01",
    ]
    for path in bundle_paths:
        s.call_with_next_page(path)
    # Writes: update, PATCH (both kinds), conditional update, delete.
    o = s.call("GET", f"Observation/{obs_ids[1]}")
    o["status"] = "amended"
    s.call("PUT", f"Observation/{obs_ids[1]}", o, expect=200)
    s.call("PATCH", f"Observation/{obs_ids[2]}", [{"op": "replace", "path": "/status", "value": "amended"}], "application/json-patch+json", expect=200)
    s.call("PATCH", f"Patient/{pid}", {"active": True}, "application/merge-patch+json", expect=200)
    s.call("PUT", f"Patient?identifier={NIK_SYSTEM}|{nik}", {"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
                                                            "gender": "female", "birthDate": "1990-08-07", "active": True}, expect=200)
    s.call("DELETE", f"Observation/{obs_ids[2]}")
    s.call("GET", f"Observation/{obs_ids[2]}", expect=410)
    # Histories of the record (with its update, patches and delete) and of the directory.
    for path in [f"Observation/_history?patient={pid}", f"_history?patient={pid}&_count=3", f"Practitioner/_history",
                 f"Observation/_history?patient={pid}&_since=2020-01-01", f"Observation/{obs_ids[2]}/_history"]:
        s.call_with_next_page(path)
    # Bundles: a transaction with a read, a search and a patch; a batch with a failure.
    patch = base64.b64encode(json.dumps([{"op": "add", "path": "/valueQuantity/comparator", "value": ">"}]).encode()).decode()
    s.call("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0f3c5b5e-6b1a-4c55-9d41-1b0c9b6c7a01", "resource": {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                                                                                 "code": {"text": "demam"}}, "request": {"method": "POST", "url": "Condition"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch}, "request": {"method": "PATCH", "url": f"Observation/{oid}"}},
        {"request": {"method": "GET", "url": f"Observation?patient={pid}&_include=Observation:subject"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
    ]}, expect=200)
    s.call("POST", "", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}/$everything?_count=1"}},
        {"request": {"method": "GET", "url": "Patient/nobody"}},
        {"request": {"method": "GET", "url": f"Observation/_history?patient={pid}"}},
        {"resource": {"resourceType": "Observation", "code": {"text": "x"}}, "request": {"method": "POST", "url": "Observation"}},
    ]}, expect=200)
    # Errors are OperationOutcomes.
    s.call("GET", "Patient?name=Siti", expect=400)
    s.call("GET", "Observation?patient=nobody&_include=Observation:code", expect=400)
    s.call("POST", "Observation", {"resourceType": "Observation", "code": {"text": "x"}}, expect=422)
    s.call("GET", "Patient/nobody", expect=404)
    # Operations and the server's own descriptions.
    s.call("POST", "Observation/$validate", {"resourceType": "Observation", "code": {"text": "x"}}, expect=200)
    s.call("POST", "Patient/$validate", {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}}]}, expect=200)
    s.call("GET", "metadata", expect=200)
    assert s.checked >= 40, s.checked
