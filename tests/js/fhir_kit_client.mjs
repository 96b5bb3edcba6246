// An unmodified fhir-kit-client against a real brankas serve: what its documentation shows.
// Run by tests/python/test_fhir_kit_client.py, which starts the server and passes
// BRANKAS_FHIR_URL and BRANKAS_TOKEN. Exits non-zero (with the failed check) on any failure.
import assert from 'node:assert/strict';
import { Client } from 'fhir-kit-client';

const NIK_SYSTEM = 'https://fhir.kemkes.go.id/id/nik';
const client = new Client({ baseUrl: process.env.BRANKAS_FHIR_URL, bearerToken: process.env.BRANKAS_TOKEN });

const cs = await client.capabilityStatement();
assert.equal(cs.resourceType, 'CapabilityStatement');
assert.equal(cs.fhirVersion, '4.0.1');

const patient = await client.create({
  resourceType: 'Patient',
  body: { resourceType: 'Patient', identifier: [{ system: NIK_SYSTEM, value: '3171054708900011' }], gender: 'female', birthDate: '1990-08-07', name: [{ family: 'Rahayu' }] },
});
assert.ok(patient.id);
const read = await client.read({ resourceType: 'Patient', id: patient.id });
assert.equal(read.name[0].family, 'Rahayu');

const obs = [];
for (let i = 0; i < 3; i++) {
  obs.push(await client.create({
    resourceType: 'Observation',
    body: { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
            subject: { reference: `Patient/${patient.id}` }, valueQuantity: { value: 70 + i, unit: '/min' } },
  }));
}

// Search by NIK, paging with nextPage, _include, a compartment search.
const found = await client.search({ resourceType: 'Patient', searchParams: { identifier: `${NIK_SYSTEM}|3171054708900011` } });
assert.deepEqual(found.entry.map((e) => e.resource.id), [patient.id]);
let page = await client.search({ resourceType: 'Observation', searchParams: { patient: patient.id, _count: 2 } });
assert.equal(page.total, 3);
const seen = page.entry.map((e) => e.resource.id);
page = await client.nextPage({ bundle: page });
seen.push(...page.entry.map((e) => e.resource.id));
assert.deepEqual(seen.sort(), obs.map((o) => o.id).sort());
const withPatient = await client.search({ resourceType: 'Observation', searchParams: { patient: patient.id, _include: 'Observation:subject' } });
assert.equal(withPatient.entry.filter((e) => e.search.mode === 'include').length, 1);
const inCompartment = await client.compartmentSearch({ resourceType: 'Observation', compartment: { resourceType: 'Patient', id: patient.id } });
assert.equal(inCompartment.total, 3);

// JSON Patch, update, vread, history, delete.
const patched = await client.patch({ resourceType: 'Patient', id: patient.id, jsonPatch: [{ op: 'add', path: '/active', value: true }] });
assert.equal(patched.active, true);
read.gender = 'female';
read.active = false;
const updated = await client.update({ resourceType: 'Patient', id: patient.id, body: { ...read, id: patient.id } });
assert.equal(updated.meta.versionId, '3');
const v1 = await client.vread({ resourceType: 'Patient', id: patient.id, version: '1' });
assert.equal(v1.active, undefined);
const history = await client.resourceHistory({ resourceType: 'Patient', id: patient.id });
assert.equal(history.type, 'history');
assert.equal(history.total, 3);

// $everything as an operation, a batch with reads and searches, a transaction.
const everything = await client.operation({ name: '$everything', resourceType: 'Patient', id: patient.id, method: 'get' });
assert.equal(everything.total, 4);
const batch = await client.batch({ body: { resourceType: 'Bundle', type: 'batch', entry: [
  { request: { method: 'GET', url: `Patient/${patient.id}` } },
  { request: { method: 'GET', url: `Observation?patient=${patient.id}&_summary=count` } },
] } });
assert.deepEqual(batch.entry.map((e) => e.response.status), ['200 OK', '200 OK']);
assert.equal(batch.entry[1].resource.total, 3);
const tx = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: [
  { fullUrl: 'urn:uuid:7d5e1c4a-2b9f-4e38-9c61-0f2d8a7b3e11', resource: { resourceType: 'Condition', subject: { reference: `Patient/${patient.id}` }, code: { text: 'demam' } }, request: { method: 'POST', url: 'Condition' } },
  { request: { method: 'DELETE', url: `Observation/${obs[2].id}` } },
] } });
assert.deepEqual(tx.entry.map((e) => e.response.status), ['201 Created', '204 No Content']);

// Errors reach the client as OperationOutcomes, with their status.
await assert.rejects(client.read({ resourceType: 'Patient', id: 'nobody' }), (e) => e.response.status === 404 && e.response.data.resourceType === 'OperationOutcome');
await assert.rejects(client.search({ resourceType: 'Patient', searchParams: { name: 'Rahayu' } }), (e) => e.response.status === 400);

console.log(JSON.stringify({ ok: true }));
