"""Interoperability: the SMART on FHIR Python client (fhirclient 4.4, its strict R4 models)
against a real `brankas serve`: create, read, search, update, delete, paging. Its models
refuse unknown or malformed elements, so every resource read back is checked as R4 too."""

import pytest
from fhirclient import client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

NIK_SYSTEM = "https://fhir.kemkes.go.id/id/nik"
NIK = "3171054708900013"


@pytest.fixture(scope="module")
def smart(server):
    c = client.FHIRClient(settings={"app_id": "brankas-test", "api_base": server["url"] + "/"})
    c.server.session.headers["Authorization"] = f"Bearer {server['token']}"
    return c


def test_fhirclient_round_trip(smart):
    p = Patient({"identifier": [{"system": NIK_SYSTEM, "value": NIK}], "gender": "female", "birthDate": "1990-08-07", "name": [{"family": "Rahayu", "given": ["Siti"]}]})
    created = p.create(smart.server)
    pid = created["id"]
    read = Patient.read(pid, smart.server)
    assert read.name[0].family == "Rahayu" and read.birthDate.isostring == "1990-08-07"
    assert read.meta.versionId == "1"

    found = list(Patient.where(struct={"identifier": f"{NIK_SYSTEM}|{NIK}"}).perform_resources_iter(smart.server))
    assert [f.id for f in found] == [pid]

    for i in range(3):
        o = Observation({"status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                         "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 70 + i, "unit": "/min"}})
        o.create(smart.server)
    # Paging: the client follows the next links itself.
    results = list(Observation.where(struct={"patient": pid, "_count": "2"}).perform_resources_iter(smart.server))
    assert len(results) == 3 and all(r.status == "final" for r in results)

    read.active = True
    read.update(smart.server)
    again = Patient.read(pid, smart.server)
    assert again.active is True and again.meta.versionId == "2"
    results[0].delete(smart.server)
    left = list(Observation.where(struct={"patient": pid}).perform_resources_iter(smart.server))
    assert len(left) == 2
