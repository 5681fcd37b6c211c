"""Parse Device Defender replies from `.../accepted` and `.../rejected`.

AWS answers on the report's topic plus `/accepted` or `/rejected`, encoded like the request:
accepted {"thingName", "reportId", "status": "ACCEPTED", "timestamp"};
rejected adds {"statusDetails": {"ErrorCode", "ErrorMessage"}} and may lack "reportId".
"""
from dataclasses import dataclass
from typing import Any, Optional

from garrison.agent import report


@dataclass(frozen=True)
class Reply:
    """One reply to a published report."""

    thing: str
    report_id: Optional[int]
    accepted: bool
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    raw: Any = None

    def describe(self) -> str:
        if self.accepted:
            return f"report {self.report_id} accepted"
        return f"report {self.report_id} rejected: {self.error_code}: {self.error_message}"


def reply_topics(thing: str, fmt: str):
    """(accepted topic, rejected topic) for a thing's reports in format `fmt`."""
    base = report.topic(thing, fmt)
    return base + "/accepted", base + "/rejected"


def parse(topic: str, payload: bytes) -> Optional[Reply]:
    """A Reply from a message on an accepted/rejected topic; None if it is not one.

    The topic decides accepted vs rejected (it is what AWS guarantees); the body supplies the
    report id and error details. A body that cannot be decoded still yields a Reply.
    """
    parts = topic.split("/")
    # $aws/things/{thing}/defender/metrics/{fmt}/{accepted|rejected}
    if len(parts) != 7 or parts[:2] != ["$aws", "things"] or parts[3:5] != ["defender", "metrics"]:
        return None
    thing, fmt, outcome = parts[2], parts[5], parts[6]
    if outcome not in ("accepted", "rejected") or fmt not in report.FORMATS:
        return None
    try:
        body = report.decode(payload, fmt)
    except report.ReportError:
        body = None
    if not isinstance(body, dict):
        body = {}
    report_id = body.get("reportId")
    if isinstance(report_id, bool) or not isinstance(report_id, int):
        report_id = None
    details = body.get("statusDetails") if isinstance(body.get("statusDetails"), dict) else {}
    accepted = outcome == "accepted"
    return Reply(
        thing=str(body.get("thingName") or thing),
        report_id=report_id,
        accepted=accepted,
        error_code=None if accepted else str(details.get("ErrorCode") or "Unknown"),
        error_message=None if accepted else str(details.get("ErrorMessage") or ""),
        raw=body or payload,
    )
