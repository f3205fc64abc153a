"""``GET /docs``: the API reference as one self-contained HTML page rendered from the OpenAPI
schema, with no script and no asset from a CDN, so an offline machine shows it whole.

FastAPI's default Swagger UI loads its JavaScript and CSS from jsDelivr; an offline server shows
a blank page, and every visit tells a third party that the service exists. This page lists each
operation (method, path, summary, description), its request body's fields (name, type,
required, constraints, description) and its responses; ``/openapi.json`` holds the full schema.
"""

from __future__ import annotations

from html import escape
from typing import Any

CSP = "default-src 'none'; style-src 'unsafe-inline'"
"""The page's Content-Security-Policy: nothing is fetched, not even from this server."""

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem }
h2 { margin-top: 2rem; font-family: ui-monospace, monospace; font-size: 1.05rem }
.method { display: inline-block; min-width: 4rem; font-weight: bold }
table { border-collapse: collapse; margin: .5rem 0 } td, th { border: 1px solid #ccc;
padding: .2rem .5rem; text-align: left; vertical-align: top } code { font-size: .9em }
"""
_LIMITS = ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern")


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return str(schema.get("type") or schema.get("$ref", "").rsplit("/", 1)[-1] or "any")


def _fields(schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    if not props:
        return ""
    required = set(schema.get("required", ()))
    rows = []
    for name, prop in props.items():
        limits = ", ".join(f"{k} {prop[k]}" for k in _LIMITS if k in prop)
        default = f"default {prop['default']!r}" if "default" in prop else ""
        notes = "; ".join(x for x in (limits, default) if x)
        rows.append(
            f"<tr><td><code>{escape(name)}</code></td><td>{escape(_type(prop))}</td>"
            f"<td>{'yes' if name in required else ''}</td><td>{escape(notes)}</td>"
            f"<td>{escape(prop.get('description', ''))}</td></tr>"
        )
    head = "<tr><th>field</th><th>type</th><th>required</th><th>limits</th><th>about</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def docs_html(spec: dict[str, Any]) -> str:
    """The reference page of an OpenAPI ``spec`` (escaped; no script, no external URL)."""
    info = spec.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>",
        f"<p>{escape(info.get('summary', ''))}</p>",
        "<p>The full schema is <a href='openapi.json'>openapi.json</a> (same auth as here).</p>",
    ]
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            parts.append(
                f"<h2><span class='method'>{escape(method.upper())}</span>{escape(path)}</h2>"
                f"<p>{escape(op.get('summary', ''))}</p><p>{escape(op.get('description', ''))}</p>"
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            parts.append(_fields(body.get("schema", {})))
            responses = op.get("responses", {})
            if responses:
                items = "".join(
                    f"<li><code>{escape(code)}</code> {escape(r.get('description', ''))}</li>"
                    for code, r in responses.items()
                )
                parts.append(f"<ul>{items}</ul>")
    parts.append("</body></html>")
    return "".join(parts)
