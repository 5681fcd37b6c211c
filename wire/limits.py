"""The wire contract's limits: the bounds device and engine both hold a report to.

The engine refuses a report past any of these (docs/wire-format.md); the agent checks the same
numbers before it sends, so a device never builds what the engine will reject. Numbers marked
AWS are AWS IoT's own; the others are Garrison's, chosen so every consumer downstream (SQLite,
JSON, a 64-bit integer) can take what passes.
"""

MAX_PAYLOAD_BYTES = 128 * 1024  # AWS: one MQTT message / report; larger gets PayloadTooLarge
DEFAULT_MAX_LIST_ITEMS = 500  # per report list on the device; `total` keeps the true count

MAX_INT = 2**63 - 1  # largest integer anywhere in a report (signed 64 bits)
MIN_CUSTOM_NUMBER = -(2**63)  # custom numbers may be negative; still signed 64 bits
MAX_PORT = 65535

MAX_STRING_CHARS = 1024  # any string value (address, interface, custom string_list entry)
MAX_NAME_CHARS = 128  # AWS: thing, custom metric, security profile and behavior names
MAX_TOPIC_THING_BYTES = 1024  # beyond this (or with unsafe characters) no reply topic is possible
MAX_ERROR_MESSAGE_CHARS = 200  # a rejected reply's ErrorMessage

REPORT_INTERVAL_S = 300  # AWS: at most one report per thing per 5 minutes
