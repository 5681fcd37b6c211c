"""The audit's routes (garrison.detect.audit.http: AWS IoT's audit API names and fields) on the
FastAPI application.

The audit declares its routes as data, (method, path, function, summary, query names, body
description), and handles them itself; this module mounts each one, with its path and query
parameters and its optional JSON object body in the OpenAPI document. The audit's bodies and
answers are described as JSON objects: pydantic models for them belong with the audit.
"""

import re
from typing import Any, Callable, Dict, Optional

from fastapi import APIRouter, Body, Request

from garrison.detect.audit import http as audit_http


def _parameters(path: str, query) -> list:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]
    return params + [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in query]


def _endpoint(name: str, with_body: bool):
    def call(request: Request, body: Any):
        query = {key: request.query_params[key] for key in request.query_params}  # the last of repeated ones
        return audit_http.handle(name, request.app.state.engine, dict(request.path_params), query, body)

    def with_a_body(request: Request, body: Optional[Dict[str, Any]] = Body(None)):
        return call(request, body)

    def without_a_body(request: Request):
        return call(request, None)

    endpoint: Callable[..., Any] = with_a_body if with_body else without_a_body
    endpoint.__name__ = "audit_" + name
    return endpoint


def router(dependencies, responses) -> APIRouter:
    """An APIRouter with every audit route, behind `dependencies` (the token)."""
    audit = APIRouter(dependencies=dependencies, responses=responses)
    for method, path, name, summary, query, body in audit_http.ROUTES:
        audit.add_api_route(
            path,
            _endpoint(name, body is not None),
            methods=[method],
            summary=summary,
            name="audit_" + name,
            response_model=Dict[str, Any],
            openapi_extra={
                "parameters": _parameters(path, query),
                "tags": ["audit"],
                **(
                    {
                        "requestBody": {
                            "description": body,
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    }
                    if body
                    else {}
                ),
            },
        )
    return audit
