"""/openapi.json and /docs: the contract, and a readable page rendered from it server-side
(no script or CDN, so the page works on a host without Internet access)."""

from __future__ import annotations

import html
import json
from typing import Any

from flask import Blueprint, Response, jsonify

from ca_service.web.contract import Answer, operation
from ca_service.web.extensions import api_document as document

docs = Blueprint("docs", __name__)


@docs.get("/openapi.json")
@operation(
    "This document",
    tags=("public",),
    answers={
        200: Answer("OpenAPI 3.1", media={"application/json": {"schema": {"type": "object"}}})
    },
)
def openapi_json() -> Response:
    return jsonify(document())


@docs.get("/docs")
@operation(
    "This document as a readable page",
    tags=("public",),
    answers={200: Answer("HTML", media={"text/html": {"schema": {"type": "string"}}})},
)
def docs_page() -> Response:
    spec = document()
    rows: list[str] = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            public = op.get("security") == []
            statuses = ", ".join(op.get("responses", {}))
            rows.append(
                "<tr><td><code>{m}</code></td><td><code>{p}</code></td><td>{s}{d}</td>"
                "<td>{a}</td><td>{r}</td></tr>".format(
                    m=method.upper(),
                    p=html.escape(path),
                    s=html.escape(op.get("summary", "")),
                    d=f"<br><small>{html.escape(op['description'])}</small>"
                    if op.get("description")
                    else "",
                    a="public" if public else "bearer token",
                    r=html.escape(statuses),
                )
            )
    schemas = "".join(
        f"<h3 id='{html.escape(n)}'>{html.escape(n)}</h3><pre>{html.escape(_fmt(schema))}</pre>"
        for n, schema in spec["components"]["schemas"].items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ca-service API</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}}
pre{{background:#f6f6f6;padding:.5em;overflow:auto}}</style></head><body>
<h1>ca-service API {html.escape(spec["info"]["version"])}</h1>
<p>{html.escape(spec["info"]["description"])}
Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
<table><tr><th>Method</th><th>Path</th><th>What</th><th>Auth</th><th>Statuses</th></tr>
{"".join(rows)}</table><h2>Schemas</h2>{schemas}</body></html>"""
    return Response(page, mimetype="text/html")


def _fmt(schema: Any) -> str:
    return json.dumps(schema, indent=2)
