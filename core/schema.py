"""OpenAPI post-processing: document the error responses every operation can give.

Views declare their success responses; the errors come from shared machinery (authentication, roles,
validation, lookups, state checks — see core/errors.py), so they are added here once, with the one
error body, instead of on every view. Without them a client generated from the schema (or a fuzzer
checking conformance) meets statuses the schema never mentioned.
"""

from __future__ import annotations

from typing import Any

ERROR_COMPONENT = "Error"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The error body of every API error (core/errors.py).",
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["field", "reason"],
            },
        },
        "request_id": {"type": "string", "nullable": True},
    },
    "required": ["status", "code", "detail", "errors"],
}

ERRORS = {
    "400": "Invalid input: `errors` names each field and the reason.",
    "401": "Not authenticated.",
    "403": "Authenticated, but the role does not allow this.",
    "404": "No such object (or not visible to you).",
    "409": "The object's current state does not allow this request.",
}
UNSAFE = {"post", "put", "patch", "delete"}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS['POSTPROCESSING_HOOKS'])."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    ref = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            wanted = ["400", "401", "403", "404"]  # 404: an unknown id, or a page past the last one
            if method in UNSAFE:
                wanted.append("409")
            # an error is rendered like the success would have been (e.g. `?format=csv` on the audit log)
            media = {"application/json"} | {
                kind for status, response in operation["responses"].items() if status.startswith("2")
                for kind in response.get("content", {})
            }  # fmt: skip
            content = {kind: {"schema": ref} for kind in sorted(media)}
            for status in wanted:  # a view's own description is kept; the body is the error body
                response = operation["responses"].setdefault(status, {"description": ERRORS[status]})
                response.setdefault("content", content)
    return result
