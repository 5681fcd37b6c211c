"""A cheap structural check of CBOR bytes, run before any decoder builds objects from them.

A CBOR decoder honours tags the report format never uses. Tags 28/29 (shared references) let a
124 KB payload define one 64,000-item list once and reference it 8,000 times: decoding is cheap
but everything that walks the result (validation) walks 512 million items (issue 10). Bignums
(tags 2/3) and the rest are no better. This scan reads the byte structure only, in one pass,
without building anything, and refuses:

- any tag (major type 6): Device Defender reports are plain maps, arrays, text, numbers;
- indefinite lengths and reserved encodings (no encoder of reports emits them);
- simple values other than false/true/null (`undefined` and unassigned ones);
- lengths that claim more bytes or items than the payload has left;
- more than `max_items` data items, nesting deeper than `max_depth`, strings totalling more
  than `max_string_bytes`, and trailing bytes after the one top-level item.

What passes decodes to at most `max_items` objects of at most the payload's bytes, so the
decoder's and the validator's work is linear in the payload size. Pure Python, stdlib only, so
the device side can use it too.
"""

from typing import Optional

MAX_ITEMS = 100_000  # a 128 KB report holds at most ~131k one-byte items; legit ones far fewer
MAX_DEPTH = 16  # a report nests 7 levels deep (report/metrics/.../connections/[i]/field)


class CborRefused(ValueError):
    """The payload is not CBOR the report format allows; the message says why."""


_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def check(
    payload: bytes, max_items: int = MAX_ITEMS, max_depth: int = MAX_DEPTH, max_string_bytes: Optional[int] = None
) -> int:
    """Raise CborRefused unless `payload` is one plain CBOR item within the bounds; returns the
    number of data items (maps count their keys and values)."""
    data = bytes(payload)
    end = len(data)
    if max_string_bytes is None:
        max_string_bytes = end
    pos = items = string_bytes = 0
    # stack of how many items each open container still needs; the sentinel is the top level
    pending = [1]
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            raise CborRefused("truncated CBOR: the payload ends inside an item")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        items += 1
        if items > max_items:
            raise CborRefused(f"more than {max_items} CBOR items")
        if info < 24:
            arg = info
        elif info in _ARG_BYTES:
            size = _ARG_BYTES[info]
            if pos + size > end:
                raise CborRefused("truncated CBOR: the payload ends inside an item's header")
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif info == 31:
            raise CborRefused("indefinite-length CBOR items are not used by reports")
        else:
            raise CborRefused(f"reserved CBOR encoding (additional information {info})")
        if major <= 1:  # unsigned / negative integer: the header is the whole item
            continue
        if major <= 3:  # byte string / text string
            if arg > end - pos:
                raise CborRefused("a CBOR string claims more bytes than the payload has")
            string_bytes += arg
            if string_bytes > max_string_bytes:
                raise CborRefused(f"CBOR strings total more than {max_string_bytes} bytes")
            pos += arg
        elif major <= 5:  # array / map: its items follow
            count = arg if major == 4 else 2 * arg
            if count > end - pos:
                raise CborRefused("a CBOR array or map claims more items than the payload has bytes")
            if count:
                if len(pending) > max_depth:
                    raise CborRefused(f"CBOR nested deeper than {max_depth} levels")
                pending.append(count)
        elif major == 6:
            raise CborRefused(f"CBOR tag {arg} is not used by reports (no tags are)")
        elif info < 24 and info not in (20, 21, 22):  # simple values: only false, true, null
            raise CborRefused(f"CBOR simple value {arg} is not used by reports")
        elif info == 24:
            raise CborRefused(f"CBOR simple value {arg} is not used by reports")
        # info 25/26/27: half, single, double float
    if pos != end:
        raise CborRefused(f"{end - pos} bytes after the CBOR item")
    return items
