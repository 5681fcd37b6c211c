"""Bearer-token authentication of the HTTP API, and the token file.

Every route but GET /health depends on `require_token`; the presented token is compared in
constant time (hmac.compare_digest on bytes of any length: constant in the token's content).
"""

import hmac
import os
import secrets
from pathlib import Path
from typing import Tuple

from fastapi import Request

from garrison.detect.api.errors import ApiError


def token_matches(authorization: str, token: bytes) -> bool:
    """Whether an Authorization header value is `Bearer <token>`."""
    scheme, _, presented = authorization.partition(" ")
    # surrogatepass: a sign-in form in UTF-7 decodes to lone surrogates, which were a 500
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode("utf-8", "surrogatepass"), token)


def require_token(request: Request) -> None:
    """A FastAPI dependency: 401 unless `Authorization: Bearer <the engine's token>`."""
    if not token_matches(request.headers.get("authorization", ""), request.app.state.token):
        raise ApiError(401, "Unauthorized", "a valid bearer token is required")


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
