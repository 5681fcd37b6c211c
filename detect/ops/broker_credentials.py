"""The engine's broker password, kept out of `ps` and out of the log.

A password in `--broker mqtt://user:pass@host` is visible to every local user in the process
list and used to appear whole in the log. `serve` takes it instead, as the agent does, from
`--broker-password-file FILE` or the environment variable GARRISON_BROKER_PASSWORD (a systemd
`LoadCredential=` file fits the first); the user name comes from `--broker-user` or the URL.
Every broker URL that is printed goes through garrison.agent.transports.paho_compat.redact_broker_url.
"""

import logging
import os
from typing import Mapping, Optional, Tuple

from garrison.agent.transports.paho_compat import parse_broker_url, redact_broker_url

PASSWORD_ENV = "GARRISON_BROKER_PASSWORD"
MAX_PASSWORD_FILE_BYTES = 4096

log = logging.getLogger("garrison.serve")


def read_password_file(path: str) -> str:
    """The first line of `path` (a trailing newline is not part of the password)."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_PASSWORD_FILE_BYTES + 1)
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise ValueError(f"{path}: a password file holds one line of at most {MAX_PASSWORD_FILE_BYTES} bytes")
    text = data.decode("utf-8", "strict").splitlines()
    if not text or not text[0]:
        raise ValueError(f"{path}: the password file is empty")
    return text[0]


def broker_credentials(
    url: str,
    user: Optional[str] = None,
    password_file: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Tuple[Optional[str], Optional[str]]:
    """(user name, password) for the engine's broker connection: the file, else the environment,
    else the URL. Raises ValueError with a one-line reason (never quoting the password)."""
    environ = os.environ if environ is None else environ
    parsed = parse_broker_url(url)
    if parsed.password is not None:
        log.warning(
            "the broker password is in --broker %s, where `ps` shows it to every local user; use "
            "--broker-password-file or $%s",
            redact_broker_url(url),
            PASSWORD_ENV,
        )
    password = parsed.password
    if password_file:
        password = read_password_file(password_file)
    elif environ.get(PASSWORD_ENV):
        password = environ[PASSWORD_ENV]
    user = user or parsed.username
    if password is not None and not user:
        raise ValueError("a broker password needs a user name: --broker-user NAME or mqtt://NAME@HOST")
    return user, password
