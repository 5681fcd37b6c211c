"""Routes for the broker's view and profiles as code: ListMetricValues, the dimensions
(Create/Update/List/Describe/DeleteDimension), ValidateSecurityProfileBehaviors and
ListSecurityProfilesForTarget. Thin: each calls one Engine method (the CLI calls the same).
Bodies and answers are AWS's shapes, described as JSON objects."""

from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import FiniteFloat

Json = Dict[str, Any]


def _engine(request: Request):
    return request.app.state.engine


def router(dependencies, responses) -> APIRouter:
    r = APIRouter(dependencies=dependencies, responses=responses)

    def route(method: str, path: str, summary: str):
        return r.api_route(path, methods=[method], response_model=Json, summary=summary)

    @route(
        "GET",
        "/metric-values",
        "A thing's metric history (ListMetricValues): metricDatumList oldest first, nextToken to page.",
    )
    def metric_values(
        thingName: str = Query(min_length=1),
        metricName: str = Query(min_length=1),
        startTime: Optional[FiniteFloat] = None,
        endTime: Optional[FiniteFloat] = None,
        dimensionName: Optional[str] = None,
        dimensionValueOperator: Optional[str] = None,
        maxResults: Optional[int] = Query(None, ge=1, le=250),
        nextToken: Optional[str] = None,
        engine=Depends(_engine),
    ):
        return engine.list_metric_values(
            thingName,
            metricName,
            startTime,
            endTime,
            dimensionName or None,
            dimensionValueOperator or None,
            maxResults,
            nextToken or None,
        )

    @route(
        "POST",
        "/security-profile-behaviors/validate",
        "Validate behaviors without storing anything (ValidateSecurityProfileBehaviors).",
    )
    def validate_behaviors(body: Json = Body(description='{"behaviors": [...]}'), engine=Depends(_engine)):
        return engine.validate_behaviors(body.get("behaviors"))

    @route(
        "GET",
        "/security-profiles-for-target",
        "Profiles attached to a target: all, group:NAME or thing:NAME (ListSecurityProfilesForTarget).",
    )
    def profiles_for_target(
        securityProfileTargetArn: str = Query(min_length=1), recursive: bool = False, engine=Depends(_engine)
    ):
        return engine.profiles_for_target(securityProfileTargetArn, recursive)

    @route("GET", "/dimensions", "List dimension names (ListDimensions).")
    def list_dimensions(engine=Depends(_engine)):
        return engine.list_dimensions()

    @route("POST", "/dimensions/{name}", "Create a dimension (CreateDimension).")
    def create_dimension(
        name: str,
        body: Json = Body(description='{"type": "TOPIC_FILTER", "stringValues": [...]}'),
        engine=Depends(_engine),
    ):
        return engine.create_dimension(name, body.get("type", "TOPIC_FILTER"), body.get("stringValues"))

    @route("PUT", "/dimensions/{name}", "Replace a dimension's topic filters (UpdateDimension).")
    def update_dimension(name: str, body: Json = Body(description='{"stringValues": [...]}'), engine=Depends(_engine)):
        return engine.update_dimension(name, body.get("stringValues"))

    @route("GET", "/dimensions/{name}", "Describe a dimension (DescribeDimension).")
    def describe_dimension(name: str, engine=Depends(_engine)):
        return engine.describe_dimension(name)

    @route("DELETE", "/dimensions/{name}", "Delete a dimension no profile uses (DeleteDimension).")
    def delete_dimension(name: str, engine=Depends(_engine)):
        engine.delete_dimension(name)
        return {"deleted": name}

    return r


__all__: List[str] = ["router"]
