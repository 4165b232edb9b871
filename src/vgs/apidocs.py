"""``/docs``: the JSON API reference rendered from the OpenAPI schema as plain HTML.

FastAPI's default ``/docs`` loads Swagger UI from a CDN and is blank offline; this page has no
scripts and no external resources: every operation with its parameters, request body, responses
and the schemas they refer to, plus a link to the raw ``/openapi.json``.
"""

from __future__ import annotations

import html
import json
from typing import Any

# no scripts at all; the only style is the page's own
DOCS_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                           "frame-ancestors 'none'", "Cache-Control": "no-cache"}

STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.op{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.method{display:inline-block;min-width:4.5em;font-weight:bold;color:#fff;border-radius:4px;padding:.1em .5em;text-align:center}
.get{background:#2f7d32}.post{background:#1565c0}.put{background:#ef6c00}.delete{background:#c62828}
code,pre{background:#f6f6f6;border-radius:3px}pre{padding:.6em;overflow:auto}
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> str:
    """A short type description: ``string``, ``integer``, ``SearchOut``, ``array of Hit``, ``A | B``."""
    if "$ref" in schema:
        name = html.escape(_ref_name(schema["$ref"]))
        return f'<a href="#schema-{name}">{name}</a>'
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    extra = f" ({html.escape(schema['format'])})" if "format" in schema else ""
    return html.escape(str(kind)) + extra


def _constraints(schema: dict[str, Any]) -> str:
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "enum", "default")
    parts = [f"{k}: {json.dumps(schema[k])}" for k in keys if k in schema]
    return html.escape("; ".join(parts))


def _schema_table(schema: dict[str, Any]) -> str:
    properties = schema.get("properties", {})
    if not properties:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code>{' *' if name in required else ''}</td><td>{_type(prop)}</td>"
        f"<td>{html.escape(prop.get('description', prop.get('title', '')))}</td><td>{_constraints(prop)}</td></tr>"
        for name, prop in properties.items())
    return f"<table><tr><th>field (* required)</th><th>type</th><th>description</th><th>constraints</th></tr>{rows}</table>"


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [f'<div class="op"><span class="method {method}">{method.upper()}</span> <code>{html.escape(path)}</code>'
             f" — {html.escape(op.get('summary', ''))}"]
    if op.get("description"):
        parts.append(f"<p>{html.escape(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        rows = "".join(f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{html.escape(p.get('in', ''))}</td>"
                       f"<td>{_type(p.get('schema', {}))}</td><td>{html.escape(p.get('description', ''))}</td></tr>"
                       for p in params)
        parts.append(f"<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>{rows}</table>")
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        parts.append(f"<h4>Request body <code>{html.escape(media)}</code></h4>{_type(content.get('schema', {}))}")
    rows = ""
    for status, response in op.get("responses", {}).items():
        types = ", ".join(f"<code>{html.escape(m)}</code> {_type(c.get('schema', {}))}" for m, c in response.get("content", {}).items())
        rows += f"<tr><td>{html.escape(status)}</td><td>{html.escape(response.get('description', ''))}</td><td>{types}</td></tr>"
    if rows:
        parts.append(f"<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>{rows}</table>")
    return "".join(parts) + "</div>"


def render_api_reference(schema: dict[str, Any]) -> str:
    """The whole reference page (HTML, no scripts, no external resources) from an OpenAPI ``schema``."""
    info = schema.get("info", {})
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')} — API reference")
    sections: dict[str, list[str]] = {}
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            tag = (op.get("tags") or ["other"])[0]
            sections.setdefault(tag, []).append(_operation(path, method, op))
    ops = "".join(f"<h2>{html.escape(tag)}</h2>{''.join(items)}" for tag, items in sections.items())
    schemas = schema.get("components", {}).get("schemas", {})
    models = "".join(f'<h3 id="schema-{html.escape(name)}">{html.escape(name)}</h3>'
                     f"<p>{html.escape(s.get('description', ''))}</p>{_schema_table(s)}" for name, s in schemas.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
            f"<p>{html.escape(info.get('description', ''))}</p>"
            f'<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI {html.escape(schema.get("openapi", ""))}). '
            f'The search page is at <a href="/">/</a>.</p>{ops}<h2>Schemas</h2>{models}</body></html>')


__all__ = ["render_api_reference"]
