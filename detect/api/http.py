"""The engine's HTTP JSON API (stdlib ThreadingHTTPServer), bearer-token protected.

Paths and payloads follow AWS IoT's REST API where it has an equivalent (ListActiveViolations
is GET /active-violations, PutVerificationStateOnViolation is POST
/violations/verification-state/{violationId}, GetBehaviorModelTrainingSummaries is GET
/behavior-model-training/summaries, ...), with AWS's field names. The OpenAPI 3
document is generated from the same route table the server dispatches on (GET /openapi.json),
so the two cannot drift. Every route but GET /health needs `Authorization: Bearer <token>`;
tokens are compared in constant time. Bind to loopback (the default) or put TLS in front.
"""
import hmac
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from garrison.agent import __version__
from garrison.detect.audit import http as audit_http
from garrison.detect.engine import Engine
from garrison.detect.judge.profiles import ProfileError
from garrison.detect.state.store import NotFound, StoreError
from garrison.detect.respond.violations import VERIFICATION_STATES

log = logging.getLogger("garrison.api")

MAX_BODY_BYTES = 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Route:
    method: str
    path: str                      # with {params}
    handler: str                   # Api method name
    summary: str
    query: Tuple[str, ...] = ()    # optional query parameters
    body: Optional[str] = None     # description of the JSON body, if any

    @property
    def pattern(self) -> "re.Pattern":
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path) + "$")


ROUTES = (
    Route("GET", "/health", "health", "Liveness (no token needed)."),
    Route("GET", "/openapi.json", "openapi", "This OpenAPI 3 document."),
    Route("GET", "/things", "list_things", "List things (registered on first report or pre-registered)."),
    Route("POST", "/things/{thingName}", "add_thing", "Pre-register a thing (strict mode admits only these)."),
    Route("DELETE", "/things/{thingName}", "delete_thing", "Forget a thing; its open violations are invalidated."),
    Route("GET", "/thing-groups", "list_groups", "List thing groups and their members."),
    Route("POST", "/thing-groups/{thingGroupName}", "create_group", "Create a thing group.",
          body='{"description": "..."} (optional)'),
    Route("DELETE", "/thing-groups/{thingGroupName}", "delete_group", "Delete a thing group."),
    Route("PUT", "/thing-groups/{thingGroupName}/things/{thingName}", "add_to_group", "Add a thing to a group."),
    Route("DELETE", "/thing-groups/{thingGroupName}/things/{thingName}", "remove_from_group",
          "Remove a thing from a group."),
    Route("GET", "/security-profiles", "list_profiles", "List security profiles and their targets."),
    Route("POST", "/security-profiles/{securityProfileName}", "put_profile",
          "Create or replace a security profile (AWS CreateSecurityProfile JSON).", ("target",),
          body="a CreateSecurityProfile document"),
    Route("GET", "/security-profiles/{securityProfileName}", "get_profile",
          "Describe a security profile (document, targets, thresholds, ML model status)."),
    Route("DELETE", "/security-profiles/{securityProfileName}", "delete_profile", "Delete a security profile."),
    Route("PUT", "/security-profiles/{securityProfileName}/targets", "attach_profile",
          "Attach a profile to a target: all, group:NAME or thing:NAME (at most 5 profiles per target).",
          ("target",)),
    Route("DELETE", "/security-profiles/{securityProfileName}/targets", "detach_profile",
          "Detach a profile from a target.", ("target",)),
    Route("GET", "/active-violations", "active_violations", "List active violations (ListActiveViolations).",
          ("thingName", "securityProfileName")),
    Route("GET", "/violations", "all_violations", "List violations, active and ended.",
          ("thingName", "securityProfileName")),
    Route("GET", "/violation-events", "violation_events", "List violation events (ListViolationEvents).",
          ("thingName", "securityProfileName", "startTime", "endTime")),
    Route("POST", "/violations/verification-state/{violationId}", "verify",
          "Set a violation's verification state (PutVerificationStateOnViolation).",
          body='{"verificationState": "' + "|".join(VERIFICATION_STATES) + '", "verificationStateDescription": "..."}'),
    Route("GET", "/mitigation-actions", "actions", "The audit log of mitigation actions.", ("thingName",)),
    Route("GET", "/behavior-model-training/summaries", "ml_training_summaries",
          "ML Detect model status (GetBehaviorModelTrainingSummaries): per ML behavior in summaries, "
          "per thing in thingSummaries (PENDING_BUILD, ACTIVE, EXPIRED).",
          ("securityProfileName", "behaviorName", "thingName")),
)
ROUTES += tuple(Route(method, path, "audit_" + name, summary, query, body)  # Device Defender Audit
                for method, path, name, summary, query, body in audit_http.ROUTES)


def openapi_document() -> Dict[str, Any]:
    """The OpenAPI 3.0 description of ROUTES."""
    paths: Dict[str, Dict[str, Any]] = {}
    for route in ROUTES:
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"\{(\w+)\}", route.path)]
        params += [{"name": name, "in": "query", "required": name == "target",
                    "schema": {"type": "number" if name.endswith("Time") else "string"}} for name in route.query]
        operation: Dict[str, Any] = {
            "operationId": route.handler, "summary": route.summary, "parameters": params,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                          "400": {"$ref": "#/components/responses/Error"},
                          "401": {"$ref": "#/components/responses/Error"},
                          "404": {"$ref": "#/components/responses/Error"}}}
        if route.body:
            operation["requestBody"] = {"required": route.handler == "put_profile", "description": route.body,
                                        "content": {"application/json": {"schema": {"type": "object"}}}}
        if route.handler == "health":
            operation["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "Garrison detect engine", "version": __version__,
                 "description": "Things, groups, security profiles and violations of a Garrison detect "
                                "engine. Times are epoch seconds; field names are AWS IoT Device Defender's."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}}}}}}}},
        "paths": paths,
    }


class Api:
    """Route handlers over an Engine: (params, query, body) -> JSON-able result."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __getattr__(self, name: str):
        if name.startswith("audit_"):  # the audit's routes (garrison.detect.audit.http)
            return lambda p, q, b: audit_http.handle(name[len("audit_"):], self.engine, p, q, b)
        raise AttributeError(name)

    def health(self, p, q, b):
        return {"status": "ok"}

    def openapi(self, p, q, b):
        return openapi_document()

    def list_things(self, p, q, b):
        return {"things": self.engine.store.list_things()}

    def add_thing(self, p, q, b):
        return {"thingName": p["thingName"], "created": self.engine.add_thing(p["thingName"])}

    def delete_thing(self, p, q, b):
        self.engine.delete_thing(p["thingName"])
        return {"thingName": p["thingName"], "deleted": True}

    def list_groups(self, p, q, b):
        return {"thingGroups": self.engine.store.list_groups()}

    def create_group(self, p, q, b):
        description = (b or {}).get("description", "")
        if not isinstance(description, str):
            raise ApiError(400, "InvalidRequest", "description must be a string")
        return {"thingGroupName": p["thingGroupName"],
                "created": self.engine.create_group(p["thingGroupName"], description)}

    def delete_group(self, p, q, b):
        self.engine.delete_group(p["thingGroupName"])
        return {"thingGroupName": p["thingGroupName"], "deleted": True}

    def add_to_group(self, p, q, b):
        return {"added": self.engine.add_to_group(p["thingGroupName"], p["thingName"])}

    def remove_from_group(self, p, q, b):
        return {"removed": self.engine.remove_from_group(p["thingGroupName"], p["thingName"])}

    def list_profiles(self, p, q, b):
        return {"securityProfiles": self.engine.list_profiles()}

    def put_profile(self, p, q, b):
        if not isinstance(b, dict):
            raise ApiError(400, "InvalidRequest", "the body must be a CreateSecurityProfile JSON object")
        doc = dict(b)
        doc.setdefault("securityProfileName", p["securityProfileName"])
        if doc["securityProfileName"] != p["securityProfileName"]:
            raise ApiError(400, "InvalidRequest", "securityProfileName in the body differs from the path")
        profile, created = self.engine.apply_profile(doc, attach=q.get("target"))
        return {"securityProfileName": profile.name, "created": created,
                "targets": self.engine.store.attachments_of(profile.name)}

    def get_profile(self, p, q, b):
        return self.engine.describe_profile(p["securityProfileName"])

    def delete_profile(self, p, q, b):
        self.engine.delete_profile(p["securityProfileName"])
        return {"securityProfileName": p["securityProfileName"], "deleted": True}

    def attach_profile(self, p, q, b):
        return {"attached": self.engine.attach(p["securityProfileName"], _required(q, "target"))}

    def detach_profile(self, p, q, b):
        return {"detached": self.engine.detach(p["securityProfileName"], _required(q, "target"))}

    def active_violations(self, p, q, b):
        return {"activeViolations": self.engine.active_violations(q.get("thingName"), q.get("securityProfileName"))}

    def all_violations(self, p, q, b):
        return {"violations": self.engine.all_violations(q.get("thingName"), q.get("securityProfileName"))}

    def violation_events(self, p, q, b):
        return {"violationEvents": self.engine.violation_events(
            q.get("thingName"), q.get("securityProfileName"), _time(q, "startTime"), _time(q, "endTime"))}

    def verify(self, p, q, b):
        if not isinstance(b, dict) or "verificationState" not in b:
            raise ApiError(400, "InvalidRequest", 'the body must be {"verificationState": ...}')
        description = b.get("verificationStateDescription")
        if description is not None and not isinstance(description, str):
            raise ApiError(400, "InvalidRequest", "verificationStateDescription must be a string")
        return self.engine.verify(p["violationId"], b["verificationState"], description)

    def actions(self, p, q, b):
        return {"actionExecutions": self.engine.store.list_actions(q.get("thingName"))}

    def ml_training_summaries(self, p, q, b):
        return self.engine.ml_training_summaries(q.get("securityProfileName") or None,
                                                 q.get("behaviorName") or None, q.get("thingName") or None)


def _required(query: Dict[str, str], name: str) -> str:
    if not query.get(name):
        raise ApiError(400, "InvalidRequest", f"query parameter {name} is required")
    return query[name]


def _time(query: Dict[str, str], name: str) -> Optional[float]:
    if name not in query:
        return None
    try:
        return float(query[name])
    except ValueError:
        raise ApiError(400, "InvalidRequest", f"{name} must be epoch seconds") from None


class _Handler(BaseHTTPRequestHandler):
    server_version = "garrison-detect"
    protocol_version = "HTTP/1.1"
    api: Api
    token: bytes

    def log_message(self, fmt: str, *args: Any) -> None:  # route the access log through logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body, indent=1, sort_keys=False).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="garrison-detect"')
        if status >= 400:  # the request body may be unread: do not reuse the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        # compare_digest on bytes of any length: constant time in the token's content
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.token)

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if not length:
            return None
        if not length.isdigit():
            raise ApiError(400, "InvalidRequest", "bad Content-Length")
        if int(length) > MAX_BODY_BYTES:
            raise ApiError(413, "PayloadTooLarge", f"the body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise ApiError(400, "InvalidJson", f"the body is not JSON: {exc}") from None

    def _dispatch(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            route, params = self._route(method, url.path)
            if route.handler != "health" and not self._authorized():
                raise ApiError(401, "Unauthorized", "a valid bearer token is required")
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            body = self._body()
            result = getattr(self.api, route.handler)(params, query, body)
            self._send(200, result)
        except ApiError as exc:
            self._send(exc.status, {"error": {"code": exc.code, "message": exc.message}})
        except NotFound as exc:
            self._send(404, {"error": {"code": "ResourceNotFound", "message": str(exc)}})
        except (StoreError, ProfileError) as exc:
            self._send(400, {"error": {"code": "InvalidRequest", "message": str(exc)}})
        except Exception:
            log.exception("API %s %s failed", method, self.path)
            self._send(500, {"error": {"code": "InternalError", "message": "internal error (see the engine log)"}})

    def _route(self, method: str, path: str):
        allowed = False
        for route in ROUTES:
            match = route.pattern.match(path)
            if match:
                if route.method == method:
                    return route, {k: unquote(v) for k, v in match.groupdict().items()}
                allowed = True
        if allowed:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
        raise ApiError(404, "NotFound", f"no such path {path}")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")


class ApiServer:
    """The API on `host:port` (port 0 picks a free one; see `.port`), served from a thread."""

    def __init__(self, engine: Engine, token: str, host: str = "127.0.0.1", port: int = 8765):
        if not token:
            raise ValueError("the API needs a token")
        handler = type("Handler", (_Handler,), {"api": Api(engine), "token": token.encode()})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ApiServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="garrison-api", daemon=True)
        self._thread.start()
        log.info("HTTP API on %s (bearer token required)", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(5)


def load_or_create_token(path: str) -> Tuple[str, bool]:
    """The token in `path`, or a new random one written there with mode 0600. (token, created)."""
    file = Path(path)
    if file.exists():
        token = file.read_text().strip()
        if not token:
            raise ValueError(f"API token file {path} is empty")
        return token, False
    token = secrets.token_urlsafe(32)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(file), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with open(fd, "w") as out:
        out.write(token + "\n")
    return token, True


if __name__ == "__main__":  # python3 -m garrison.detect.api.http > detect/api/openapi.json
    print(json.dumps(openapi_document(), indent=2))
