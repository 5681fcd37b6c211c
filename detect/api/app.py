"""The engine's HTTP JSON API: routes over the Engine, as a FastAPI application.

Paths and payloads follow AWS IoT's REST API where it has an equivalent (ListActiveViolations
is GET /active-violations, PutVerificationStateOnViolation is POST
/violations/verification-state/{violationId}, GetBehaviorModelTrainingSummaries is GET
/behavior-model-training/summaries, ...), with AWS's field names. Request and response bodies
are the pydantic models of garrison.detect.api.models, so the OpenAPI document (GET
/openapi.json, generated from these routes) carries their real schemas. Every route but GET
/health needs `Authorization: Bearer <token>` (garrison.detect.api.auth). Served by
garrison.detect.api.server (uvicorn, with connection limits).
"""

import json
from typing import Any, Dict, Optional, Union

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import FiniteFloat

from garrison.agent import __version__
from garrison.detect.api import audit, broker, errors, models
from garrison.detect.api.auth import require_token, token_matches
from garrison.detect.api.errors import ApiError
from garrison.detect.api.guard import BODY_TIMEOUT, BodyGuard
from garrison.detect import console
from garrison.wire import names

TITLE = "Garrison detect engine"
DESCRIPTION = (
    "Things, groups, security profiles and violations of a Garrison detect engine. "
    "Times are epoch seconds; field names are AWS IoT Device Defender's."
)
_ERROR: Dict[str, Any] = {"model": models.ErrorResponse, "description": "An error"}
_DOCUMENTED_ERRORS: Dict[Union[int, str], Dict[str, Any]] = {400: _ERROR, 401: _ERROR, 404: _ERROR}


def engine_of(request: Request):
    return request.app.state.engine


public = APIRouter()
api = APIRouter(dependencies=[Depends(require_token)], responses=_DOCUMENTED_ERRORS)

ThingName = Path(description=names.THING.text)
Target = Query(min_length=1, description="all, group:NAME or thing:NAME")
ThingFilter = Query(None, alias="thingName")
ProfileFilter = Query(None, alias="securityProfileName")
Time = Optional[FiniteFloat]  # nan, inf and 1e400 are 400s, not 500s


def _route(router: APIRouter, method: str, path: str, model, summary: str):
    """Register a handler; its operationId is the function's name, its output `model`."""
    return router.api_route(
        path, methods=[method], response_model=model, summary=summary, response_model_exclude_unset=True
    )


@_route(public, "GET", "/health", models.Health, "Liveness (no token needed).")
def health():
    return {"status": "ok"}


@_route(api, "GET", "/openapi.json", Dict[str, Any], "This OpenAPI 3 document.")
def openapi(request: Request):
    return request.app.openapi()


@_route(api, "GET", "/things", models.ThingList, "List things (registered on first report or pre-registered).")
def list_things(engine=Depends(engine_of)):
    return {"things": engine.list_things()}


@_route(
    api, "POST", "/things/{thingName}", models.ThingCreated, "Pre-register a thing (strict mode admits only these)."
)
def add_thing(thingName: str = ThingName, engine=Depends(engine_of)):
    return {"thingName": thingName, "created": engine.add_thing(thingName)}


@_route(
    api, "DELETE", "/things/{thingName}", models.ThingDeleted, "Forget a thing; its open violations are invalidated."
)
def delete_thing(thingName: str = ThingName, engine=Depends(engine_of)):
    engine.delete_thing(thingName)
    return {"thingName": thingName, "deleted": True}


@_route(api, "GET", "/thing-groups", models.ThingGroupList, "List thing groups and their members.")
def list_groups(engine=Depends(engine_of)):
    return {"thingGroups": engine.list_groups()}


@_route(api, "POST", "/thing-groups/{thingGroupName}", models.GroupCreated, "Create a thing group.")
def create_group(thingGroupName: str, body: Optional[models.GroupCreate] = Body(None), engine=Depends(engine_of)):
    description = body.description if body else ""
    return {"thingGroupName": thingGroupName, "created": engine.create_group(thingGroupName, description)}


@_route(api, "DELETE", "/thing-groups/{thingGroupName}", models.GroupDeleted, "Delete a thing group.")
def delete_group(thingGroupName: str, engine=Depends(engine_of)):
    engine.delete_group(thingGroupName)
    return {"thingGroupName": thingGroupName, "deleted": True}


@_route(api, "PUT", "/thing-groups/{thingGroupName}/things/{thingName}", models.Added, "Add a thing to a group.")
def add_to_group(thingGroupName: str, thingName: str = ThingName, engine=Depends(engine_of)):
    return {"added": engine.add_to_group(thingGroupName, thingName)}


@_route(
    api, "DELETE", "/thing-groups/{thingGroupName}/things/{thingName}", models.Removed, "Remove a thing from a group."
)
def remove_from_group(thingGroupName: str, thingName: str = ThingName, engine=Depends(engine_of)):
    return {"removed": engine.remove_from_group(thingGroupName, thingName)}


@_route(api, "GET", "/security-profiles", models.ProfileList, "List security profiles and their targets.")
def list_profiles(engine=Depends(engine_of)):
    return {"securityProfiles": engine.list_profiles()}


@_route(
    api,
    "POST",
    "/security-profiles/{securityProfileName}",
    models.ProfilePut,
    "Create or replace a security profile (AWS CreateSecurityProfile JSON).",
)
def put_profile(
    securityProfileName: str,
    body: models.ProfileDocument,
    target: Optional[str] = Query(None, min_length=1, description="attach it to: all, group:NAME or thing:NAME"),
    engine=Depends(engine_of),
):
    doc = body.model_dump(exclude_unset=True)  # the document as given (extra fields kept)
    doc.setdefault("securityProfileName", securityProfileName)
    if doc["securityProfileName"] != securityProfileName:
        raise ApiError(400, "InvalidRequest", "securityProfileName in the body differs from the path")
    profile, created = engine.apply_profile(doc, attach=target)
    return {"securityProfileName": profile.name, "created": created, "targets": engine.profile_targets(profile.name)}


@_route(
    api,
    "GET",
    "/security-profiles/{securityProfileName}",
    models.ProfileDescription,
    "Describe a security profile (document, targets, thresholds, ML model status).",
)
def get_profile(securityProfileName: str, engine=Depends(engine_of)):
    return engine.describe_profile(securityProfileName)


@_route(api, "DELETE", "/security-profiles/{securityProfileName}", models.ProfileDeleted, "Delete a security profile.")
def delete_profile(securityProfileName: str, engine=Depends(engine_of)):
    engine.delete_profile(securityProfileName)
    return {"securityProfileName": securityProfileName, "deleted": True}


@_route(
    api,
    "PUT",
    "/security-profiles/{securityProfileName}/targets",
    models.Attached,
    "Attach a profile to a target: all, group:NAME or thing:NAME (at most 5 profiles per target).",
)
def attach_profile(securityProfileName: str, target: str = Target, engine=Depends(engine_of)):
    return {"attached": engine.attach(securityProfileName, target)}


@_route(
    api,
    "DELETE",
    "/security-profiles/{securityProfileName}/targets",
    models.Detached,
    "Detach a profile from a target.",
)
def detach_profile(securityProfileName: str, target: str = Target, engine=Depends(engine_of)):
    return {"detached": engine.detach(securityProfileName, target)}


@_route(api, "GET", "/active-violations", models.ActiveViolationList, "List active violations (ListActiveViolations).")
def active_violations(
    thing: Optional[str] = ThingFilter, profile: Optional[str] = ProfileFilter, engine=Depends(engine_of)
):
    return {"activeViolations": engine.active_violations(thing, profile)}


@_route(api, "GET", "/violations", models.ViolationList, "List violations, active and ended.")
def all_violations(
    thing: Optional[str] = ThingFilter, profile: Optional[str] = ProfileFilter, engine=Depends(engine_of)
):
    return {"violations": engine.all_violations(thing, profile)}


@_route(api, "GET", "/violation-events", models.ViolationEventList, "List violation events (ListViolationEvents).")
def violation_events(
    thing: Optional[str] = ThingFilter,
    profile: Optional[str] = ProfileFilter,
    start: Time = Query(None, alias="startTime", description="epoch seconds"),
    end: Time = Query(None, alias="endTime", description="epoch seconds"),
    engine=Depends(engine_of),
):
    return {"violationEvents": engine.violation_events(thing, profile, start, end)}


@_route(
    api,
    "POST",
    "/violations/verification-state/{violationId}",
    models.Violation,
    "Set a violation's verification state (PutVerificationStateOnViolation).",
)
def verify(violationId: str, body: models.VerificationRequest, engine=Depends(engine_of)):
    return engine.verify(violationId, body.verificationState, body.verificationStateDescription)


@_route(api, "GET", "/mitigation-actions", models.ActionExecutionList, "The audit log of mitigation actions.")
def actions(thing: Optional[str] = ThingFilter, engine=Depends(engine_of)):
    return {"actionExecutions": engine.list_actions(thing)}


@_route(
    api,
    "POST",
    "/things/{thingName}/responses",
    models.ActionExecution,
    "Ask for a response on a thing (quarantine, release, disable, enable, run-command, reconfigure; "
    "docs/actions.md): logged as pending, carried out by the engine; follow its seq in /mitigation-actions.",
)
def respond(body: models.ResponseRequest, thingName: str = ThingName, engine=Depends(engine_of)):
    action = body.model_dump(exclude={"dryRun"}, exclude_none=True)
    return engine.respond(thingName, action, by="api", dry_run=body.dryRun)


@_route(
    api,
    "GET",
    "/behavior-model-training/summaries",
    models.TrainingSummaries,
    "ML Detect model status (GetBehaviorModelTrainingSummaries): per ML behavior in summaries, "
    "per thing in thingSummaries (PENDING_BUILD, ACTIVE, EXPIRED).",
)
def ml_training_summaries(
    profile: Optional[str] = ProfileFilter,
    behavior: Optional[str] = Query(None, alias="behaviorName"),
    thing: Optional[str] = ThingFilter,
    engine=Depends(engine_of),
):
    return engine.ml_training_summaries(profile or None, behavior or None, thing or None)


audit_routes = audit.router(
    [Depends(require_token)], _DOCUMENTED_ERRORS
)  # Device Defender Audit (garrison.detect.audit)
broker_routes = broker.router([Depends(require_token)], _DOCUMENTED_ERRORS)  # metric history, dimensions, ...


def create_app(engine, token: str, body_timeout: float = BODY_TIMEOUT) -> Any:
    """The ASGI application: FastAPI behind the body guard."""
    app = FastAPI(
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,
        separate_input_output_schemas=False,
    )
    app.state.engine, app.state.token = engine, token.encode()
    app.include_router(public)
    app.include_router(api)
    app.include_router(audit_routes)
    app.include_router(broker_routes)
    errors.install(app)
    console.install(app, engine)  # the browser console under /console, and GET /metrics
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return console.front(
        app,
        BodyGuard(
            app,
            lambda headers: token_matches(
                next((v.decode("latin-1") for n, v in headers if n == b"authorization"), ""), app.state.token
            ),
            body_timeout=body_timeout,
        ),
        body_timeout,
    )


def _openapi(app: FastAPI) -> Dict[str, Any]:
    """FastAPI's document, with bearer auth declared and our 400s in place of its 422s."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, servers=[{"url": "/"}]
    )
    doc.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if path == "/health":
                operation["security"] = []
    for name in ("HTTPValidationError", "ValidationError"):
        doc["components"].get("schemas", {}).pop(name, None)
    app.openapi_schema = doc
    return doc


def openapi_document() -> Dict[str, Any]:
    """The OpenAPI document of the API (no engine needed)."""
    return create_app(None, "unused").app.openapi()


def routes() -> set:
    """(METHOD, path) of every route the application dispatches on."""
    return {
        (method, route.path)
        for route in public.routes + api.routes + audit_routes.routes + broker_routes.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


if __name__ == "__main__":  # python3 -m garrison.detect.api.app > detect/api/openapi.json
    print(json.dumps(openapi_document(), indent=2))
