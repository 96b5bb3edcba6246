"""Interoperability: an unmodified fhir-kit-client (npm, Node.js) against a real `brankas
serve`: the scenario is tests/js/fhir_kit_client.mjs; its packages are installed from
tests/js/package-lock.json by tests/python/run.sh."""

import os
import pathlib
import shutil
import subprocess

import pytest

JS = pathlib.Path(__file__).resolve().parents[1] / "js"


def test_fhir_kit_client_scenario(server):
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "fhir-kit-client").is_dir():
        pytest.fail("Node.js and tests/js/node_modules are needed: tests/python/run.sh installs them (npm ci)")
    env = {**os.environ, "BRANKAS_FHIR_URL": server["url"], "BRANKAS_TOKEN": server["token"]}
    r = subprocess.run([node, str(JS / "fhir_kit_client.mjs")], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 0, f"fhir-kit-client scenario failed:\n{r.stdout}\n{r.stderr}"
    assert '"ok":true' in r.stdout
