"""The wire contract's codecs: reports and replies as JSON or CBOR bytes.

A report's format is named by its topic (json | cbor); a reply is encoded like its report.
JSON is compact, ASCII-only, and never carries NaN or Infinity (they are not JSON; the engine
would refuse them). Decoding does no validation: see garrison.detect.ingest.validate.
"""

import json
from typing import Any

import cbor2

from garrison.wire.topics import FORMATS


class CodecError(ValueError):
    """A document that cannot be encoded, or a payload that cannot be decoded."""


def _unknown(fmt: Any) -> CodecError:
    return CodecError(f"unknown format {fmt!r} (choose {' or '.join(FORMATS)})")


def encode(doc: Any, fmt: str) -> bytes:
    """`doc` as `fmt` bytes; CodecError for values the format cannot carry (NaN, Infinity, ...)."""
    try:
        if fmt == "json":
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        if fmt == "cbor":
            return cbor2.dumps(doc)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError) as exc:
        raise CodecError(f"cannot encode as {fmt.upper()}: {exc}") from None
    raise _unknown(fmt)


def decode(payload: bytes, fmt: str) -> Any:
    """Parse a payload into Python objects; CodecError when it is not well-formed `fmt`."""
    try:
        if fmt == "json":
            return json.loads(payload)
        if fmt == "cbor":
            return cbor2.loads(payload)
    except (ValueError, TypeError, RecursionError, cbor2.CBORDecodeError, OverflowError, MemoryError) as exc:
        raise CodecError(f"malformed {fmt.upper()}: {exc}") from None
    raise _unknown(fmt)
