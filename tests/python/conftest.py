"""Shared fixture of the client tests: a real `brankas serve` of its own.

The server is started once per test module: `brankas init` in a temporary directory, then
`brankas serve --insecure-http --listen 127.0.0.1:0`; the one JSON "listening" line on stdout
gives its URL; a facility client (approved by a security officer) gets an OAuth2
client_credentials token (HTTP Basic).

Binary: $BRANKAS_BIN, default target/debug/brankas (under $CARGO_TARGET_DIR if set).
"""

import base64
import json
import os
import pathlib
import select
import subprocess
import tempfile
import time

import pytest
import requests

REPO = pathlib.Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60


def brankas_bin() -> pathlib.Path:
    env = os.environ.get("BRANKAS_BIN")
    if env:
        return pathlib.Path(env)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "brankas"


@pytest.fixture(scope="module")
def server():
    exe = brankas_bin()
    if not exe.is_file():
        pytest.fail(f"brankas binary not found at {exe}: build it (cargo build -p brankas) or set BRANKAS_BIN")
    with tempfile.TemporaryDirectory(prefix="brankas-fhirpy-") as tmp:
        data = pathlib.Path(tmp) / "data"
        key = pathlib.Path(tmp) / "master.key"
        env = {**os.environ, "BRANKAS_LOG": os.environ.get("BRANKAS_LOG", "warn")}
        init = subprocess.run(
            [str(exe), "init", "--data-dir", str(data), "--key-file", str(key)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )
        assert init.returncode == 0, f"brankas init failed: {init.stderr}"
        # The bootstrap admin reaches no patient data; a facility's system client does, once
        # a security officer (the first one, registered by the key's holder) approves it.
        def cli(*args):
            r = subprocess.run([str(exe), *args, "--data-dir", str(data), "--key-file", str(key)],
                               capture_output=True, text=True, timeout=60, env=env, check=False)
            assert r.returncode == 0, f"brankas {args[:2]} failed: {r.stderr}"
            return json.loads(r.stdout) if r.stdout.strip() else None
        officer = cli("clients", "create", "--name", "fhirpy officer", "--role", "security-officer",
                      "--scopes", "system/AuditEvent.rs")
        assert officer["status"] == "active", officer
        secret_file = pathlib.Path(tmp) / "officer.secret"
        secret_file.write_text(officer["client_secret"])
        creds = cli("clients", "create", "--name", "fhirpy test clinic", "--role", "facility-system",
                    "--organization", "Organization/fhirpy-clinic", "--scopes", "system/*.cruds")
        assert creds["status"] == "pending_approval", creds
        cli("clients", "approve", creds["client_id"], "--approver-id", officer["client_id"],
            "--approver-secret-file", str(secret_file))

        stderr_log = open(pathlib.Path(tmp) / "serve.stderr", "w+")
        proc = subprocess.Popen(
            [str(exe), "serve", "--data-dir", str(data), "--key-file", str(key),
             "--listen", "127.0.0.1:0", "--insecure-http"],
            stdout=subprocess.PIPE, stderr=stderr_log, text=True, env=env,
        )
        try:
            listening = None
            deadline = time.monotonic() + STARTUP_SECONDS
            while listening is None and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if ready:
                    line = proc.stdout.readline()
                    if not line:
                        break  # stdout closed: the server exited
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("event") == "listening":
                        listening = msg
                elif proc.poll() is not None:
                    break
            if listening is None:
                stderr_log.seek(0)
                pytest.fail(f"brankas serve did not report listening (exit {proc.poll()}): {stderr_log.read()[-2000:]}")

            fhir_url = listening["url"]
            root = fhir_url.rsplit("/fhir", 1)[0]
            basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
            r = requests.post(
                f"{root}/auth/token",
                headers={"Authorization": f"Basic {basic}"},
                data={"grant_type": "client_credentials"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
            yield {"url": fhir_url, "token": token}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stderr_log.close()


