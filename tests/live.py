"""A real ca-service under gunicorn on loopback, and an HTTP client that checks every answer
against the service's own OpenAPI document."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ca_service.web.openapi import document

CA_SERVICE = str(Path(sys.executable).parent / "ca-service")
SPEC = document()
_REGISTRY = Registry().with_resource(
    "urn:spec", Resource.from_contents(SPEC, default_specification=DRAFT202012)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


def _template_for(path: str) -> str | None:
    clean = path.split("?", 1)[0]
    for template in SPEC["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, clean):
            return template
    return None


def check_against_spec(method: str, path: str, reply: Reply) -> None:
    """Every response must be documented: its status for that operation, and its JSON body."""
    template = _template_for(path)
    assert template is not None, f"{path} is not in the OpenAPI document"
    operation = SPEC["paths"][template].get(method.lower())
    assert operation is not None, f"{method} {template} is not in the OpenAPI document"
    documented = operation["responses"].get(str(reply.status))
    assert documented is not None, f"{method} {template} answered {reply.status}, not documented"
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    content = documented.get("content")
    if not content or reply.status == 304:
        return
    assert reply.content_type in content, (
        f"{method} {template} {reply.status}: content type {reply.content_type!r} "
        f"not among {sorted(content)}"
    )
    if reply.content_type.endswith("json"):
        schema = content[reply.content_type]["schema"]
        validator = jsonschema.Draft202012Validator(
            {"$ref": "urn:spec#" + schema["$ref"][1:]} if "$ref" in schema else schema,
            registry=_REGISTRY,
        )
        validator.validate(reply.json)


@dataclass
class LiveServer:
    base_url: str
    port: int
    admin_token: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    checked: int = field(default=0)

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        check_spec: bool = True,
    ) -> Reply:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
        if check_spec:
            check_against_spec(method, path, reply)
            self.checked += 1
        return reply

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    data_dir: Path, database_url: str, *, workers: int = 2, extra_env: dict[str, str] | None = None
) -> LiveServer:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(
        {
            "CA_DATA_DIR": str(data_dir),
            "CA_DATABASE_URL": database_url,
            "CA_KEY_PASSPHRASE": "live-test-passphrase",
            "CA_BIND": f"127.0.0.1:{port}",
            "CA_WORKERS": str(workers),
            "CA_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CA_LOG_LEVEL": "WARNING",
        }
    )
    env.update(extra_env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [CA_SERVICE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 90
    token = None
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if token is None:
            m = re.search(r"(cas_[a-z0-9]{16}_[A-Za-z0-9_-]{43})", text)
            token = m.group(1) if m else None
        if proc.poll() is not None:
            raise RuntimeError(f"ca-service serve exited {proc.returncode}:\n{text}")
        if token is not None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return LiveServer(f"http://127.0.0.1:{port}", port, token, env, proc, log_path)
                conn.close()
            except OSError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"ca-service serve did not become healthy:\n{log_path.read_text()}")
