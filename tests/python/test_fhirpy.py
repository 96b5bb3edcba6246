"""Interoperability: a real, unmodified FHIR client (fhirpy's SyncFHIRClient) against a
real `brankas serve` (started by the `server` fixture of conftest.py).
"""

import pytest
from fhirpy import SyncFHIRClient

NIK_SYSTEM = "https://fhir.kemkes.go.id/id/nik"
# A fictional woman born 1990-08-07 in DKI Jakarta: province 31, regency 71, district 05,
# day of birth 07 + 40 (female) = 47, month 08, year 90, serial 0003.
NIK = "3171054708900003"


@pytest.fixture(scope="module")
def client(server):
    return SyncFHIRClient(server["url"], authorization=f"Bearer {server['token']}")


def test_create_read_and_find_by_nik(client):
    patient = client.resource(
        "Patient",
        identifier=[{"system": NIK_SYSTEM, "value": NIK}],
        name=[{"use": "official", "family": "Rahayu", "given": ["Siti"]}],
        gender="female",
        birthDate="1990-08-07",
    )
    patient.save()
    assert patient.id, "the server assigned no id"

    read = client.reference("Patient", patient.id).to_resource()
    assert read.id == patient.id
    assert read["birthDate"] == "1990-08-07"
    assert read["identifier"][0]["value"] == NIK
    assert read["meta"]["versionId"] == "1"

    found = client.resources("Patient").search(identifier=f"{NIK_SYSTEM}|{NIK}").fetch()
    assert [p.id for p in found] == [patient.id]
    # count() sends _count=0 with fhirpy's own _totalMethod, which R4 servers ignore.
    assert client.resources("Patient").search(identifier=f"{NIK_SYSTEM}|{NIK}").count() == 1


def test_invalid_nik_is_refused(client):
    # Province 99 does not exist: no such NIK can have been issued.
    from fhirpy.base.exceptions import OperationOutcome

    patient = client.resource(
        "Patient",
        identifier=[{"system": NIK_SYSTEM, "value": "9971054708900003"}],
        gender="female",
        birthDate="1990-08-07",
    )
    with pytest.raises(OperationOutcome) as refused:
        patient.save()
    assert "9971054708900003" not in str(refused.value)


def test_nik_disagreeing_with_gender_is_stored_and_flagged(client):
    # Day 47 means a woman: on a man's registration the NIK disagrees, which real data does.
    patient = client.resource(
        "Patient",
        identifier=[{"system": NIK_SYSTEM, "value": "3171054708900004"}],
        gender="male",
        birthDate="1990-08-07",
    )
    patient.save()
    read = client.reference("Patient", patient.id).to_resource()
    flags = [t["code"] for t in read["meta"].get("tag", []) if t["system"] == "https://brankas.id/fhir/CodeSystem/data-quality"]
    assert flags == ["nik-gender-mismatch"]


def test_second_patient_with_a_held_nik_is_a_conflict(client):
    from fhirpy.base.exceptions import OperationOutcome

    first = client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": "3171054708900005"}], gender="female")
    first.save()
    second = client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": "3171054708900005"}], gender="female")
    with pytest.raises(OperationOutcome) as refused:
        second.save()
    assert f"Patient/{first.id}" in str(refused.value)


def test_unknown_nik_finds_nobody(client):
    found = client.resources("Patient").search(identifier=f"{NIK_SYSTEM}|3171050101900001").fetch()
    assert found == []


def test_patch_and_conditional_interactions(client):
    """fhirpy's patch(), get_or_create(), and conditional update, patch and delete of a search."""
    nik = "3171054708900006"
    by_nik = {"identifier": f"{NIK_SYSTEM}|{nik}"}
    body = client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": nik}], gender="female", birthDate="1990-08-07")
    made, created = client.resources("Patient").search(**by_nik).get_or_create(body)
    assert created
    again, created = client.resources("Patient").search(**by_nik).get_or_create(body)
    assert not created and again.id == made.id
    # client.patch sends a JSON object: merged into the stored Patient.
    client.patch("Patient", made.id, active=True)
    assert client.reference("Patient", made.id).to_resource()["active"] is True
    # resource.patch sends only the named fields.
    made.patch(active=False)
    read = client.reference("Patient", made.id).to_resource()
    assert read["active"] is False and read["birthDate"] == "1990-08-07"
    assert read["meta"]["versionId"] == "3"
    # Conditional patch and update of the one Patient the search finds.
    client.resources("Patient").search(**by_nik).patch(gender="female", multipleBirthBoolean=False)
    assert client.reference("Patient", made.id).to_resource()["multipleBirthBoolean"] is False
    updated, created = client.resources("Patient").search(**by_nik).update(
        client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": nik}], gender="female", birthDate="1990-08-07", active=True)
    )
    assert not created and updated.id == made.id and updated["active"] is True
    # Conditional delete: gone.
    client.resources("Patient").search(**by_nik).delete()
    assert client.resources("Patient").search(**by_nik).fetch() == []


def test_include_and_revinclude(client):
    """fhirpy's include() and revinclude(): one round trip brings the referenced and the
    referencing resources, marked as included."""
    nik = "3171054708900008"
    patient = client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": nik}], gender="female", birthDate="1990-08-07")
    patient.save()
    doctor = client.resource("Practitioner", name=[{"family": "Wijaya", "prefix": ["dr."]}])
    doctor.save()
    obs = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "94558-4"}]},
        subject=patient.to_reference(),
        performer=[doctor.to_reference()],
        valueCodeableConcept={"text": "Negative"},
    )
    obs.save()

    bundle = client.resources("Observation").search(patient=patient.id).include("Observation", "subject").include("Observation", "performer").fetch_raw()
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"])
    assert modes == [("include", "Patient"), ("include", "Practitioner"), ("match", "Observation")]
    # fetch() keeps the searched type only, as fhirpy documents.
    assert [o.id for o in client.resources("Observation").search(patient=patient.id).include("Observation", "performer").fetch()] == [obs.id]

    bundle = (
        client.resources("Patient")
        .search(identifier=f"{NIK_SYSTEM}|{nik}")
        .revinclude("Observation", "subject")
        .include("Observation", "performer", iterate=True)
        .fetch_raw()
    )
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"])
    assert modes == sorted([("match", "Patient", patient.id), ("include", "Observation", obs.id), ("include", "Practitioner", doctor.id)])


def test_has_and_chained_search(client):
    """fhirpy's has() and a chained parameter (search(subject__identifier=...) is spelled with
    fhirpy's own chain syntax as `subject.identifier`)."""
    nik = "3171054708900009"
    patient = client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": nik}], gender="female", birthDate="1990-08-07")
    patient.save()
    obs = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "94558-4"}]},
        subject=patient.to_reference(),
        valueCodeableConcept={"text": "Negative"},
    )
    obs.save()
    by_nik = {"identifier": f"{NIK_SYSTEM}|{nik}"}
    found = client.resources("Patient").search(**by_nik).has("Observation", "patient", code="94558-4").fetch()
    assert [p.id for p in found] == [patient.id]
    assert client.resources("Patient").search(**by_nik).has("Observation", "patient", code="0000-0").fetch() == []
    chained = client.resources("Observation").search(**{"subject.identifier": f"{NIK_SYSTEM}|{nik}"}).fetch()
    assert [o.id for o in chained] == [obs.id]


def test_async_client(server):
    """fhirpy's AsyncFHIRClient does the same against the same server."""
    import asyncio

    from fhirpy import AsyncFHIRClient

    async def scenario():
        client = AsyncFHIRClient(server["url"], authorization=f"Bearer {server['token']}")
        nik = "3171054708900012"
        patient = client.resource("Patient", identifier=[{"system": NIK_SYSTEM, "value": nik}], gender="female", birthDate="1990-08-07")
        await patient.save()
        obs = client.resource("Observation", status="final", code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                              subject=patient.to_reference(), valueQuantity={"value": 72, "unit": "/min"})
        await obs.save()
        found = await client.resources("Patient").search(identifier=f"{NIK_SYSTEM}|{nik}").fetch()
        assert [p.id for p in found] == [patient.id]
        assert await client.resources("Observation").search(patient=patient.id).count() == 1
        raw = await client.resources("Observation").search(patient=patient.id).include("Observation", "subject").fetch_raw()
        assert sorted(e["search"]["mode"] for e in raw["entry"]) == ["include", "match"]
        await patient.patch(active=True)
        assert (await client.reference("Patient", patient.id).to_resource())["active"] is True
        made, created = await client.resources("Patient").search(identifier=f"{NIK_SYSTEM}|{nik}").get_or_create(patient)
        assert not created and made.id == patient.id
        await obs.delete()
        assert await client.resources("Observation").search(patient=patient.id).fetch() == []

    asyncio.run(scenario())
