"""The wire contract's replies: the engine's `/accepted` and `/rejected` answers, built and parsed.

AWS answers on the report's topic plus `/accepted` or `/rejected`, encoded like the request:
accepted {"thingName", "reportId", "status": "ACCEPTED", "timestamp"};
rejected adds {"statusDetails": {"ErrorCode", "ErrorMessage"}} and may lack "reportId".
The engine builds replies with `accepted` / `rejected`; the agent reads them with `parse`.
Both get the same `Reply`. Error codes: AWS's two, then Garrison's extensions
(docs/wire-format.md says when each is sent and what a device should do).
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional

from garrison.wire import codec, topics, values
from garrison.wire.limits import MAX_ERROR_MESSAGE_CHARS

# AWS's codes
INVALID_PAYLOAD = "InvalidPayload"  # any malformed report
THROTTLED = "Throttled"  # a second report within the interval
# Garrison's extensions
PAYLOAD_TOO_LARGE = "PayloadTooLarge"  # over max_payload (AWS IoT drops these at the broker)
STALE_REPORT_ID = "StaleReportId"  # a report id lower than the last accepted one
INVALID_THING_NAME = "InvalidThingName"  # the topic's thing breaks garrison.wire.names.THING
UNREGISTERED_THING = "UnregisteredThing"  # strict mode: thing not registered with the engine
REPORT_TOO_OLD = "ReportTooOld"  # dated before the thing was first seen, or past the spool's age
INTERNAL_ERROR = "InternalError"  # the engine failed to store the report; resend later

AWS_ERROR_CODES = (INVALID_PAYLOAD, THROTTLED)
EXTENSION_ERROR_CODES = (
    PAYLOAD_TOO_LARGE,
    STALE_REPORT_ID,
    INVALID_THING_NAME,
    UNREGISTERED_THING,
    REPORT_TOO_OLD,
    INTERNAL_ERROR,
)
ERROR_CODES = AWS_ERROR_CODES + EXTENSION_ERROR_CODES

ACCEPTED, REJECTED = "ACCEPTED", "REJECTED"


@dataclass(frozen=True)
class Reply:
    """One reply to a report. Built by the engine (`topic` and `payload` are what it publishes)
    or parsed by the device (`raw` is the decoded body, or the payload if it did not decode)."""

    thing: str
    report_id: Optional[int]
    accepted: bool
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    timestamp: Optional[int] = None
    topic: str = ""
    payload: bytes = b""
    raw: Any = None

    def describe(self) -> str:
        if self.accepted:
            return f"report {self.report_id} accepted"
        return f"report {self.report_id} rejected: {self.error_code}: {self.error_message}"


def accepted_body(thing: str, report_id: int, timestamp: int) -> Dict[str, Any]:
    """Exactly AWS's four keys, in AWS's order."""
    return {"thingName": thing, "reportId": report_id, "status": ACCEPTED, "timestamp": timestamp}


def rejected_body(thing: str, report_id: Optional[int], code: str, message: str, timestamp: int) -> Dict[str, Any]:
    """`reportId` only when known; `message` cut to MAX_ERROR_MESSAGE_CHARS."""
    body: Dict[str, Any] = {"thingName": thing}
    if report_id is not None:
        body["reportId"] = report_id
    body.update(
        status=REJECTED, statusDetails={"ErrorCode": code, "ErrorMessage": shorten(message)}, timestamp=timestamp
    )
    return body


def accepted(thing: str, fmt: str, report_id: int, timestamp: int) -> Reply:
    """The engine's ACCEPTED reply to a report on `thing`'s `fmt` topic, encoded like it."""
    body = accepted_body(thing, report_id, timestamp)
    return Reply(
        thing,
        report_id,
        True,
        timestamp=timestamp,
        topic=topics.reply_topic(thing, fmt, "accepted"),
        payload=codec.encode(body, fmt),
    )


def rejected(thing: str, fmt: str, report_id: Optional[int], code: str, message: str, timestamp: int) -> Reply:
    """The engine's REJECTED reply, encoded like the report."""
    body = rejected_body(thing, report_id, code, message, timestamp)
    details = body["statusDetails"]
    return Reply(
        thing,
        report_id,
        False,
        code,
        details["ErrorMessage"],
        timestamp,
        topics.reply_topic(thing, fmt, "rejected"),
        codec.encode(body, fmt),
    )


def parse(topic: str, payload: bytes) -> Optional[Reply]:
    """A Reply from a message on an accepted/rejected topic; None if it is not one.

    The topic decides accepted vs rejected (it is what AWS guarantees); the body supplies the
    report id and error details. A body that cannot be decoded still yields a Reply.
    """
    parsed = topics.parse_reply_topic(topic)
    if parsed is None:
        return None
    thing, fmt, outcome = parsed
    try:
        body = codec.decode(payload, fmt)
    except codec.CodecError:
        body = None
    if not isinstance(body, dict):
        body = {}
    report_id = body.get("reportId")
    if isinstance(report_id, bool) or not isinstance(report_id, int):
        report_id = None
    timestamp = body.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        timestamp = None
    details = body.get("statusDetails")
    if not isinstance(details, dict):
        details = {}
    ok = outcome == "accepted"
    return Reply(
        thing=str(body.get("thingName") or thing),
        report_id=report_id,
        accepted=ok,
        error_code=None if ok else _shown(details.get("ErrorCode") or "Unknown", 64),
        error_message=None if ok else _shown(details.get("ErrorMessage") or ""),
        timestamp=timestamp,
        topic=topic,
        payload=bytes(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else b"",
        raw=body or payload,
    )


def _shown(value: Any, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    """What the other side wrote in a reply, as the device logs and keeps it: at most `limit`
    characters, control characters escaped (a hostile broker or engine must not flood or drive
    the device's log: an ESC, a CR, a newline that forges a line)."""
    return shorten(values.escape_controls(str(value)[: 4 * limit]), limit)


def shorten(text: Any, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
