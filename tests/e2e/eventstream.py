"""AWS event stream framing (`application/vnd.amazon.eventstream`) for the Bedrock tests, written from the
AWS specification independently of Understudy's Rust encoder, so each checks the other: a 12-byte prelude
(total length, headers length, CRC32 of those 8 bytes), string headers, the payload, and the CRC32 of all
that precedes it."""

from __future__ import annotations

import base64
import binascii
import json
import struct


def message(headers: dict[str, str], payload: bytes) -> bytes:
    head = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        head += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", binascii.crc32(body))


def event(event_type: str, payload: dict) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return message(headers, json.dumps(payload, separators=(",", ":")).encode())


def chunk(event_json: dict, pad: str = "") -> bytes:
    """A `chunk` event wrapping one event of the model's own stream, as InvokeModelWithResponseStream sends."""
    inner = json.dumps(event_json, separators=(",", ":")).encode()
    payload = {"bytes": base64.b64encode(inner).decode()}
    if pad:
        payload["p"] = pad
    return event("chunk", payload)


def decode(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Every message as (string headers, payload); asserts both CRCs and the lengths."""
    out, at = [], 0
    while at < len(data):
        total, head_len, prelude_crc = struct.unpack_from(">III", data, at)
        assert binascii.crc32(data[at : at + 8]) == prelude_crc, f"prelude CRC at byte {at}"
        end = at + total
        assert end <= len(data), f"message at byte {at} is cut short"
        (crc,) = struct.unpack_from(">I", data, end - 4)
        assert binascii.crc32(data[at : end - 4]) == crc, f"message CRC at byte {at}"
        headers, h = {}, at + 12
        while h < at + 12 + head_len:
            n = data[h]
            name = data[h + 1 : h + 1 + n].decode()
            kind = data[h + 1 + n]
            assert kind == 7, f"header {name} is not a string"
            (vlen,) = struct.unpack_from(">H", data, h + 2 + n)
            headers[name] = data[h + 4 + n : h + 4 + n + vlen].decode()
            h += 4 + n + vlen
        out.append((headers, data[at + 12 + head_len : end - 4]))
        at = end
    return out
