#!/usr/bin/env python3
"""Generator of the plexus.v1 golden test vectors.

The JSON files next to this script are the committed golden vectors; this
script is kept for reference and to regenerate them:

    pip install cbor2
    python3 conformance/vectors/generate.py

It deliberately does NOT use the Rust crate under test: every byte is
produced either by the Python `cbor2` library (an independent CBOR encoder)
or by the small `head()` helper below, which writes CBOR initial bytes by
hand (needed for non-shortest heads, indefinite lengths, reserved additional
information and other encodings no conforming encoder produces). Embedded
items (params, results, chunk data) are encoded on their own and spliced into
the envelope, so the vector records their exact bytes.

Each vector is one JSON file `<name>.json`; the format is described in
`README.md` in this directory. Before writing, the script re-reads every valid
frame with `cbor2.loads` and checks it against the vector's `expect`, so the
generator is itself a second, independent check of the expectations.

Running it deletes every other `*.json` file in this directory, so a renamed
or removed vector does not linger.
"""

import json
import math
import pathlib
import re
import struct

import cbor2

OUT = pathlib.Path(__file__).resolve().parent

U64_MAX = 2**64 - 1

# ---------------------------------------------------------------------------
# Encoding helpers
# ---------------------------------------------------------------------------


def head(major, value, width=None):
    """The initial byte(s) of a data item of `major` type with argument
    `value`, shortest unless `width` (1, 2, 4 or 8 argument bytes) is given."""
    if width is None:
        if value < 24:
            return bytes([major << 5 | value])
        for w in (1, 2, 4, 8):
            if value < 1 << (8 * w):
                width = w
                break
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    assert value < 1 << (8 * width)
    return bytes([major << 5 | ai]) + value.to_bytes(width, "big")


def enc(v):
    """Encodes a value: bytes are taken as an already-encoded item, anything
    else goes through cbor2."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    return cbor2.dumps(v)


class Raw(bytes):
    """Marks bytes as an already-encoded CBOR item (as opposed to a CBOR byte
    string) where the distinction matters to the reader."""


def arr(*items, width=None):
    """A definite-length array of already-encoded or encodable items."""
    return head(4, len(items), width) + b"".join(enc(i) for i in items)


def bstr(data, width=None):
    """A CBOR byte string."""
    return head(2, len(data), width) + data


def tstr(text, width=None):
    """A CBOR text string (or raw bytes as a text string's content)."""
    data = text.encode() if isinstance(text, str) else text
    return head(3, len(data), width) + data


def cmap(*pairs):
    """A definite-length map from (key, value) pairs, in the given order,
    each side already encoded or encodable."""
    return head(5, len(pairs)) + b"".join(enc(k) + enc(v) for k, v in pairs)


# ---------------------------------------------------------------------------
# Diagnostic notation (RFC 8949 section 8, with encoding indicators for
# non-shortest heads and always for floats)
# ---------------------------------------------------------------------------


class DiagError(Exception):
    pass


def _arg(b, pos, ai):
    if ai < 24:
        return ai, pos, ""
    if ai > 27:
        raise DiagError("reserved or indefinite")
    n = 1 << (ai - 24)
    if pos + n > len(b):
        raise DiagError("truncated")
    v = int.from_bytes(b[pos:pos + n], "big")
    shortest = {24: 24, 25: 256, 26: 65536, 27: 2**32}[ai]
    non_shortest = v < shortest
    return v, pos + n, ("_%d" % (ai - 24)) if non_shortest else ""


def _fmt_float(x, ind):
    if math.isnan(x):
        s = "NaN"
    elif math.isinf(x):
        s = "Infinity" if x > 0 else "-Infinity"
    else:
        s = repr(x)
    return s + ind


def _diag(b, pos):
    if pos >= len(b):
        raise DiagError("truncated")
    ib = b[pos]
    pos += 1
    major, ai = ib >> 5, ib & 31
    if major == 7 and ai in (25, 26, 27):
        n = 1 << (ai - 24)
        if pos + n > len(b):
            raise DiagError("truncated")
        raw = b[pos:pos + n]
        x = struct.unpack({2: ">e", 4: ">f", 8: ">d"}[n], raw)[0]
        return _fmt_float(x, "_%d" % (ai - 24)), pos + n
    v, pos, ind = _arg(b, pos, ai)
    if major == 0:
        return "%d%s" % (v, ind), pos
    if major == 1:
        return "%d%s" % (-1 - v, ind), pos
    if major in (2, 3):
        if pos + v > len(b):
            raise DiagError("truncated")
        data = b[pos:pos + v]
        pos += v
        if major == 2:
            return "h'%s'%s" % (data.hex(), ind), pos
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DiagError("utf8") from e
        return json.dumps(text, ensure_ascii=False) + ind, pos
    if major == 4:
        parts = []
        for _ in range(v):
            s, pos = _diag(b, pos)
            parts.append(s)
        return "[" + (ind + " " if ind else "") + ", ".join(parts) + "]", pos
    if major == 5:
        parts = []
        for _ in range(v):
            k, pos = _diag(b, pos)
            x, pos = _diag(b, pos)
            parts.append("%s: %s" % (k, x))
        return "{" + (ind + " " if ind else "") + ", ".join(parts) + "}", pos
    if major == 6:
        s, pos = _diag(b, pos)
        return "%d%s(%s)" % (v, ind, s), pos
    # major 7, simple values
    if ai == 24 and v < 32:
        raise DiagError("two-byte simple below 32")
    return {20: "false", 21: "true", 22: "null", 23: "undefined"}.get(
        v, "simple(%d)" % v) + ind, pos


def diagnostic(b):
    """Diagnostic notation of exactly one well-formed item, or None."""
    try:
        s, pos = _diag(b, 0)
    except DiagError:
        return None
    return s if pos == len(b) else None


# ---------------------------------------------------------------------------
# Vector builders
# ---------------------------------------------------------------------------

VECTORS = []


def add(v):
    assert v["name"] not in {x["name"] for x in VECTORS}, v["name"]
    VECTORS.append(v)


def valid(name, description, frame, expect, canonical=None, layer="frame",
          **extra):
    v = {
        "name": name,
        "description": description,
        "layer": layer,
        "valid": True,
        "cbor_hex": frame.hex(),
        "diagnostic": diagnostic(frame),
        "expect": expect,
    }
    assert v["diagnostic"] is not None, name
    if canonical is not None:
        assert canonical != frame, name
        v["canonical_hex"] = canonical.hex()
    v.update(extra)
    add(v)


def invalid(name, description, frame, decode_error, max_frame_size=None):
    too_large = decode_error == "TooLarge"
    v = {
        "name": name,
        "description": description,
        "layer": "frame",
        "valid": False,
        "cbor_hex": frame.hex(),
        "error": "payload_too_large" if too_large else "invalid_frame",
        "close": 1009 if too_large else 4005,
        "decode_error": decode_error,
    }
    d = diagnostic(frame)
    if d is not None:
        # Well-formed CBOR with a bad envelope: the notation helps the reader.
        v["diagnostic"] = d
    if max_frame_size is not None:
        v["max_frame_size"] = max_frame_size
    add(v)


def params_vector(name, description, frame, expect, method, ok,
                  error="invalid_params"):
    extra = {"method": method, "params_valid": ok}
    if not ok:
        extra["error"] = error
        extra["close"] = None
    valid(name, description, frame, expect, layer="params", **extra)


def request(id_, method, params):
    p = enc(params)
    return arr(0, id_, method, p), {
        "kind": "request", "id": id_, "method": method, "params_hex": p.hex()}


def notification(method, params):
    p = enc(params)
    return arr(2, method, p), {
        "kind": "notification", "method": method, "params_hex": p.hex()}


def response_ok(id_, result):
    r = enc(result)
    return arr(1, id_, 0, r), {
        "kind": "response", "id": id_, "result_hex": r.hex()}


def response_err(id_, code, message, retry_after_ms=None, details=None,
                 extra_pairs=()):
    pairs = [(0, code), (1, message)]
    err = {"code": code, "message": message}
    if retry_after_ms is not None:
        pairs.append((2, retry_after_ms))
        err["retry_after_ms"] = retry_after_ms
    if details is not None:
        d = enc(details)
        pairs.append((3, d))
        err["details_hex"] = d.hex()
    obj = cmap(*pairs, *extra_pairs)
    return arr(1, id_, 1, obj), {"kind": "response", "id": id_, "error": err}


def chunk(id_, seq, fin, data):
    d = enc(data)
    return arr(3, id_, seq, fin, d), {
        "kind": "chunk", "id": id_, "seq": seq, "final": fin,
        "data_hex": d.hex()}


# Where docs/protocol.md has an example frame, the vector uses the same
# values, so the examples there and these vectors agree byte for byte.

TOKEN = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlhdCI6MTc2"
         "NzIyNTYwMCwiZXhwIjoxNzY3MjI5MjAwLCJwbGV4dXMiOnsic3ViIjpbImNoYXQuPiJd"
         "LCJwdWIiOlsiY2hhdC4-Il0sInByZXNlbmNlIjp0cnVlfX0.OT2zoOjgoo3hhp81VrF2D"
         "dK9GG4TfM6ucbJ29DASEoo")
TOKEN2 = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlhdCI6MTc"
          "2NzIyODYwMCwiZXhwIjoxNzY3MjMyMjAwLCJwbGV4dXMiOnsic3ViIjpbImNoYXQuPiJ"
          "dLCJwdWIiOlsiY2hhdC4-Il0sInByZXNlbmNlIjp0cnVlfX0.hTOVZ6SWg6jhNaanREg"
          "XdjWG3QyJbPCzEYFc4xI1IXQ")

# The defaults of protocol.md section 10 (plexus_protocol's
# ServerLimits::DEFAULTS), every key present.
LIMITS = cmap((0, 1048576), (1, 1024), (2, 1024), (3, 256), (4, 262144),
              (5, 1024), (6, 25000), (7, 100), (8, 200), (9, 32), (10, 1000),
              (11, 8 * 1048576))
# What a server predating limits keys 9-11 sent (and the old max_in_flight
# default).
LIMITS_BEFORE_9 = cmap((0, 1048576), (1, 64), (2, 1024), (3, 256),
                       (4, 262144), (5, 1024), (6, 25000), (7, 100), (8, 200))
# expires_in_ms of the examples: a one-hour token accepted one second after
# its iat, with the reference server's 5 s leeway: exp + leeway - now.
EXPIRES_IN_MS = (3600 - 1 + 5) * 1000

# ---------------------------------------------------------------------------
# Requests, one per v1 request method
# ---------------------------------------------------------------------------

f, e = request(1, "auth", cmap((0, TOKEN), (1, "laptop-1"),
                                (2, "plexus-py/0.1.0")))
valid("request-auth", "auth with token, instance and agent: the first frame "
      "of every connection", f, e)
f, e = request(1, "auth", cmap((0, TOKEN)))
valid("request-auth-token-only", "auth with only the required token", f, e)
f, e = request(12, "auth.refresh", cmap((0, TOKEN2)))
valid("request-auth-refresh", "auth.refresh with a fresh token", f, e)
f, e = request(1, "ping", None)
valid("request-ping", "ping with null params, the smallest useful request", f,
      e)
f, e = request(4, "ping", 1767225723456)
valid("request-ping-integer", "ping with an integer timestamp as params", f, e)
f, e = request(5, "ping", cmap(("t", 1700000000123), ("n", [1, -1, b"\x00\xff",
                                                              True, None])))
valid("request-ping-any-params", "ping params may be any CBOR item; the "
      "result echoes them", f, e)
OPAQUE = arr(Raw(head(6, 1) + enc(1767225723)),
             Raw(head(6, 2) + bstr(b"\x01" + b"\x00" * 10)),
             Raw(b"\xf9\x3e\x00"), Raw(b"\xfa\x47\xc3\x50\x00"),
             Raw(head(6, 55799) + tstr("x")))
f, e = request(6, "ping", Raw(OPAQUE))
valid("request-ping-tags-floats", "tags (of any number, semantics unchecked) "
      "and half/single floats may appear inside opaque items", f, e)
f, e = request(2, "subscribe", cmap((0, "chat.room1"), (1, True)))
valid("request-subscribe", "subscribe to an exact topic and join its presence",
      f, e)
f, e = request(5, "subscribe", cmap((0, "chat.*")))
valid("request-subscribe-pattern", "subscribe to a pattern with a * wildcard",
      f, e)
f, e = request(8, "unsubscribe", cmap((0, "chat.*")))
valid("request-unsubscribe", "unsubscribe from a pattern", f, e)
f, e = request(3, "publish", cmap((0, "chat.room1"), (1, {"text": "hello"})))
valid("request-publish", "publish a map payload (echo absent: defaults to "
      "true)", f, e)
f, e = request(10, "publish", cmap((0, "chat.room2"), (1, bstr(b"\x00\x01")),
                                    (2, False)))
valid("request-publish-bytes-no-echo", "publish a byte-string payload without "
      "echo", f, e)
f, e = request(21, "presence.get", cmap((0, "chat.room1"), (1, 2), (2, 2)))
valid("request-presence-get", "presence.get with cursor and limit", f, e)
f, e = request(20, "presence.get", cmap((0, "chat.room1"), (2, 2)))
valid("request-presence-get-first-page", "presence.get first page: limit, no "
      "cursor", f, e)
f, e = request(22, "presence.set", cmap((0, {"status": "away"})))
valid("request-presence-set", "presence.set with a small info map", f, e)
f, e = request(23, "presence.set", cmap((0, None)))
valid("request-presence-set-clear", "presence.set with null info clears it",
      f, e)

# ---------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------

f, e = notification("cancel", cmap((0, 21)))
valid("notification-cancel", "cancel from the client: aborts its in-flight "
      "request 21", f, e)
f, e = notification("cancel", cmap((0, 3)))
valid("notification-cancel-from-server", "cancel from the server: withdraws "
      "its own request 3 (the server's id space, protocol.md 6.4 and 8); the "
      "frame has the same layout in both directions", f, e)
f, e = notification("event", cmap((0, "chat.room1"), (1, {"text": "hello"}),
                                  (2, "alice")))
valid("notification-event", "event with payload and publisher", f, e)
f, e = notification("event", cmap((0, "chat.room1"), (1, "hi"), (2, "alice")))
valid("notification-event-text", "event with a text payload", f, e)
f, e = notification("event", cmap((0, "sensors.t1"),
                                  (1, bstr(b"\x01\x02\x03"))))
valid("notification-event-no-from", "event without the optional from", f, e)
MEMBER_ALICE = cmap((0, "sess-4f1c"), (1, "alice"), (2, {"status": "online"}))
f, e = notification("presence.join", cmap(
    (0, "chat.room1"),
    (1, cmap((0, "sess-4f1c"), (1, "alice"), (2, {"status": "away"})))))
valid("notification-presence-join", "a member with info joined (or changed "
      "its info)", f, e)
f, e = notification("presence.join", cmap(
    (0, "chat.room1"), (1, cmap((0, "sess-4f1c"), (1, "alice")))))
valid("notification-presence-join-no-info", "a member without info joined",
      f, e)
f, e = notification("presence.leave", cmap((0, "chat.room1"),
                                           (1, cmap((0, "sess-9b02"),
                                                    (1, "bob")))))
valid("notification-presence-leave", "a member left (no info)", f, e)
f, e = notification("token.expiring", cmap((0, 60000)))
valid("notification-token-expiring", "the session expires (exp + leeway) in "
      "60 s", f, e)
f, e = notification("token.expiring", cmap((0, 0)))
valid("notification-token-expiring-zero", "token.expiring sent right after "
      "the response to a token that ran out (exp + leeway) while it was "
      "verified: 0 ms left, close 4002 follows", f, e)
f, e = notification("closing", cmap((0, 4008), (1, "server shutting down"),
                                    (2, 2000)))
valid("notification-closing-going-away", "closing before close 4008, with a "
      "retry hint", f, e)
for code, slug, reason in [
        (4000, "auth-failed", "authentication failed"),
        (4001, "auth-timeout", "no auth within the deadline"),
        (4002, "token-expired", "token expired"),
        (4003, "forbidden", "token subject changed"),
        (4004, "too-many-connections", "connection limit reached"),
        (4005, "protocol-error", "undecodable frame"),
        (4007, "rate-limited", "request rate exceeded repeatedly"),
        (4009, "session-replaced", "replaced by a newer connection")]:
    f, e = notification("closing", cmap((0, code), (1, reason)))
    valid("notification-closing-" + slug, "closing before close %d" % code,
          f, e)
f, e = notification("x.future", cmap((0, 1)))
valid("notification-unknown", "a notification this version does not know is "
      "a valid frame (receivers ignore it)", f, e)

# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------

f, e = response_ok(1, cmap((0, "sess-4f1c"), (1, "alice"),
                           (2, EXPIRES_IN_MS), (3, LIMITS)))
valid("response-auth", "auth result with session, user, expiry (exp + "
      "leeway - now) and every limits key 0-11 at its default", f, e,
      result_of="auth")
f, e = response_ok(1, cmap((0, "sess-4f1c"), (1, "alice"), (3,
                                                             LIMITS_BEFORE_9)))
valid("response-auth-limits-before-9", "auth result of a server predating "
      "limits keys 9-11 (and without expiry): still a valid auth result; the "
      "client assumes max_depth 32, max_presence_page 1000 and no byte bound",
      f, e, result_of="auth")
f, e = response_ok(12, cmap((0, EXPIRES_IN_MS)))
valid("response-auth-refresh", "auth.refresh result: expiry of the new token "
      "(exp + leeway - now)", f, e, result_of="auth.refresh")
f, e = response_ok(1, None)
valid("response-ping", "ping result echoing null params", f, e,
      result_of="ping")
f, e = response_ok(4, 1767225723456)
valid("response-ping-integer", "ping result echoing an integer", f, e,
      result_of="ping")
f, e = response_ok(2, {})
valid("response-subscribe", "subscribe result: an empty map", f, e,
      result_of="subscribe")
f, e = response_ok(3, cmap((0, 2)))
valid("response-publish", "publish result: queued for 2 connections", f, e,
      result_of="publish")
f, e = response_ok(20, cmap(
    (0, arr(MEMBER_ALICE, cmap((0, "sess-9b02"), (1, "bob")))), (1, 2)))
valid("response-presence-get", "presence.get page with two members and a "
      "next cursor", f, e, result_of="presence.get")
f, e = response_ok(21, cmap((0, [])))
valid("response-presence-get-empty", "presence.get last page: no members, "
      "no cursor", f, e, result_of="presence.get")

f, e = response_ok(8, {})
valid("response-unsubscribe", "unsubscribe result: an empty map", f, e,
      result_of="unsubscribe")
f, e = response_ok(22, {})
valid("response-presence-set", "presence.set result: an empty map", f, e,
      result_of="presence.set")
f, e = response_ok(21, cmap((0, arr(cmap((0, "sess-c311"), (1, "carol"))))))
valid("response-presence-get-last-page", "presence.get last page: one member, "
      "no next cursor", f, e, result_of="presence.get")
f, e = response_err(8, "not_found", "not subscribed to chat.*")
valid("response-error-not-found-pattern", "unsubscribe of a pattern not "
      "subscribed", f, e)
f, e = response_err(10, "forbidden", "may not publish on admin.alerts")
valid("response-error-forbidden-publish", "publish refused by the "
      "capabilities", f, e)

# (code, id, message, retry_after_ms, details)
ERRORS = [
    ("invalid_frame", 30, "chunk sequence broken", None, None),
    ("invalid_params", 6, "presence requires an exact topic", None, None),
    ("unauthenticated", 1, "token expired", None, None),
    ("forbidden", 12, "token subject differs from the session's user", None,
     None),
    ("not_found", 7, "not subscribed to chat.room2", None, None),
    ("method_not_found", 41, "unknown method history.get", None, None),
    ("conflict", 5, "already subscribed to chat.*", None, None),
    ("rate_limited", 40, "request rate exceeded", 250, None),
    ("payload_too_large", 22, "presence info is 2048 bytes; the limit is 1024",
     None, None),
    ("too_many_requests", 42, "1024 requests already in flight", None, None),
    ("timeout", 31, "timed out", None, None),
    ("cancelled", 21, "cancelled by the client", None, None),
    ("unavailable", 32, "token keys unavailable", 1000, None),
    ("internal", 33, "internal error", None, None),
    ("quota_exceeded", 34, "the space's quota would be exceeded", None,
     cmap((0, cmap((0, 3), (1, 52))), (1, cmap((0, 2), (1, 67108864))))),
    ("clock_skew", 35, "timestamp 111411203997696000 is more than 60000 ms "
     "ahead of the hub's clock", None,
     cmap((0, (1700000000600 << 16) | 1), (1, 60000))),
]
for code, id_, message, retry, details in ERRORS:
    f, e = response_err(id_, code, message, retry, details)
    desc = "error response with code %s" % code
    if retry:
        desc += " and retry_after_ms"
    valid("response-error-" + code.replace("_", "-"), desc, f, e)
f, e = response_err(43, "seat_limit", "monthly seats used up",
                    details={"seats": 1000000})
valid("response-error-unknown-code", "an error code this version does not "
      "know (with details) is still a valid error response", f, e)
f, e = response_err(122, "conflict", "already subscribed",
                    extra_pairs=[(9, "future"), (-1, 0)])
canon, _ = response_err(122, "conflict", "already subscribed")
valid("response-error-unknown-keys", "unknown keys (also negative ones) in "
      "the error object are ignored (and dropped on re-encoding)", f, e,
      canonical=canon)
canon, e = response_err(123, "timeout", "timed out")
f = arr(1, 123, 1, cmap((0, "timeout"), (1, "timed out"), (2, None),
                        (3, None)))
valid("response-error-null-optionals", "retry_after_ms and details given as "
      "null mean absent (and are dropped on re-encoding)", f, e,
      canonical=canon)
canon, e = response_err(124, "internal", "oops")
valid("response-error-keys-unordered", "error object keys in any order "
      "(re-encoded in ascending order)",
      arr(1, 124, 1, cmap((1, "oops"), (0, "internal"))), e, canonical=canon)
f, e = response_err(13, "conflict", "an auth.refresh is already in flight")
valid("response-error-conflict-refresh", "a second auth.refresh while one is "
      "in flight is answered conflict (protocol.md 9.4, 11.2)", f, e)

# ---------------------------------------------------------------------------
# Requests from the server (protocol.md 6.4): the same frame layouts, in the
# server's own id space. app.hello and app.other stand for methods of a later
# revision that the client opted into.
# ---------------------------------------------------------------------------

f, e = request(1, "app.hello", cmap((0, "bob")))
valid("request-from-server", "a request the server sends to a client that "
      "opted into its method; id 1 is in the server's id space", f, e)
f, e = response_ok(1, cmap((0, "hello, bob")))
valid("response-to-server", "the client's response to the server's request "
      "1", f, e)
f, e = response_err(2, "method_not_found", "app.other is not served")
valid("response-to-server-method-not-found", "the client's answer to a "
      "server request for a method it does not serve", f, e)
f, e = chunk(4, 0, True, cmap((0, "done")))
valid("chunk-from-client-final", "a client's streamed answer to the server's "
      "request 4 ends with a final chunk (a terminal frame)", f, e)

# ---------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------

f, e = chunk(9, 0, False, bstr(b"\x01\x02"))
valid("chunk-first", "first chunk of a stream", f, e)
f, e = chunk(9, 1, True, None)
valid("chunk-final", "final chunk with null data", f, e)
f, e = chunk(9, 2, True, bstr(b""))
valid("chunk-empty-bytes", "chunk with an empty byte string", f, e)
f, e = chunk(11, 0, True, {"rows": [1, 2, 3]})
valid("chunk-map-data", "chunk data may be any CBOR item", f, e)
BIG = bytes(i % 251 for i in range(65536))
f, e = chunk(10, 0, True, bstr(BIG))
valid("chunk-64kib", "chunk carrying 64 KiB of data (4-byte length head)",
      f, e)
f, e = chunk(12, U64_MAX, True, bstr(b"x"))
valid("chunk-seq-max", "seq 2^64-1", f, e)

# ---------------------------------------------------------------------------
# Ids and integer heads
# ---------------------------------------------------------------------------

for id_, slug, what in [(0, "0", "id 0"),
                        (23, "23", "id 23, the largest immediate value"),
                        (24, "24", "id 24, 1-byte argument"),
                        (500, "500", "id 500, 2-byte argument"),
                        (70000, "70000", "id 70000, 4-byte argument"),
                        (2**32, "2pow32", "id 2^32, 8-byte argument"),
                        (U64_MAX, "max", "id 2^64-1")]:
    f, e = request(id_, "ping", None)
    valid("request-id-" + slug, what, f, e)
f, e = response_ok(U64_MAX, None)
valid("response-id-max", "response to id 2^64-1", f, e)
f, e = chunk(U64_MAX, 0, False, bstr(b""))
valid("chunk-id-max", "chunk of request 2^64-1", f, e)

ping_canon, ping_expect = request(1, "ping", None)
NULL = Raw(b"\xf6")
for width in (1, 2, 4, 8):
    f = arr(0, head(0, 1, width), "ping", NULL)
    valid("nonshortest-id-%dbyte" % width, "id 1 with a %d-byte argument: "
          "accepted, re-encoded shortest" % width, f, ping_expect,
          canonical=ping_canon)
valid("nonshortest-kind", "kind 0 with a 1-byte argument",
      arr(head(0, 0, 1), 1, "ping", NULL), ping_expect, canonical=ping_canon)
valid("nonshortest-array-length", "frame array length 4 with a 1-byte "
      "argument", arr(0, 1, "ping", NULL, width=1), ping_expect,
      canonical=ping_canon)
valid("nonshortest-method-length", "method text length with a 1-byte argument",
      arr(0, 1, tstr("ping", 1), NULL), ping_expect, canonical=ping_canon)
f, e = response_ok(1, None)
valid("nonshortest-status", "response status 0 with a 2-byte argument",
      arr(1, 1, head(0, 0, 2), NULL), e, canonical=f)
f, e = chunk(9, 1, True, bstr(b""))
valid("nonshortest-seq", "chunk seq 1 with a 4-byte argument",
      arr(3, 9, head(0, 1, 4), True, bstr(b"")), e, canonical=f)
PARAMS_NS = head(5, 1) + head(0, 0, 2) + tstr("chat.room1", 1)
f, e = request(12, "unsubscribe", Raw(PARAMS_NS))
valid("nonshortest-inside-params", "non-shortest heads inside params are "
      "kept byte for byte (params are never re-encoded)", f, e)

# ---------------------------------------------------------------------------
# Trailing envelope elements (ignored, dropped on re-encoding)
# ---------------------------------------------------------------------------

f, e = request(2, "ping", None)
valid("request-trailing-element", "a fifth request element is ignored",
      arr(0, 2, "ping", NULL, "future"), e, canonical=f)
f, e = notification("event", cmap((0, "a.b"), (1, 1)))
valid("notification-trailing-elements", "extra notification elements (any "
      "items) are ignored", arr(2, "event", cmap((0, "a.b"), (1, 1)), 1,
                                {"x": [1]}), e, canonical=f)
f, e = response_ok(5, cmap((0, 1)))
valid("response-trailing-element", "an extra response element is ignored",
      arr(1, 5, 0, cmap((0, 1)), None), e, canonical=f)
f, e = chunk(9, 2, False, bstr(b"ab"))
valid("chunk-trailing-element", "an extra chunk element is ignored",
      arr(3, 9, 2, False, bstr(b"ab"), 0), e, canonical=f)

# ---------------------------------------------------------------------------
# Limits: depth and size
# ---------------------------------------------------------------------------

# Depth counts every item: the frame array is depth 1, params depth 2. Params
# of 31 nested arrays, the innermost empty, reach depth 32 exactly.
deep_ok = b"\x81" * 30 + b"\x80"
f, e = request(1, "ping", Raw(deep_ok))
valid("depth-32", "params nested so the innermost item is at depth 32, the "
      "default limit", f, e)
f, _ = request(1, "ping", Raw(b"\x81" * 31 + b"\x00"))
invalid("depth-33", "one level more: the innermost integer is at depth 33",
        f, "TooDeep")
f, _ = request(1, "ping", Raw(b"\xc1" * 31 + b"\x00"))
invalid("depth-33-tags", "tags count as levels too: 31 nested tags put the "
        "integer at depth 33", f, "TooDeep")

f, e = request(1, "ping", bstr(b"\x00" * 54))
assert len(f) == 64
valid("size-at-limit", "a 64-byte frame with max_frame_size 64 is accepted",
      f, e, max_frame_size=64)
f, _ = request(1, "ping", bstr(b"\x00" * 55))
assert len(f) == 65
invalid("too-large", "a 65-byte frame with max_frame_size 64", f, "TooLarge",
        max_frame_size=64)
invalid("too-large-before-parsing", "size is checked before anything else: an "
        "oversized frame of break bytes is TooLarge, not Malformed",
        b"\xff" * 65, "TooLarge", max_frame_size=64)

# ---------------------------------------------------------------------------
# Unknown method and params-level vectors (typed params decoding)
# ---------------------------------------------------------------------------

f, e = request(4, "chat.history", cmap((0, "chat.room1")))
params_vector("request-unknown-method", "a request for a method this version "
              "does not know is a valid frame; the server answers "
              "method_not_found and keeps the connection", f, e,
              "chat.history", False, error="method_not_found")


def pv(name, description, method, params, ok, id_=20):
    if method in ("cancel", "event", "presence.join", "presence.leave",
                  "token.expiring", "closing", "rpc.credit"):
        f, e = notification(method, params)
    else:
        f, e = request(id_, method, params)
    params_vector(name, description, f, e, method, ok)


pv("params-auth-unknown-keys", "unknown integer keys in auth params are "
   "ignored", "auth", cmap((0, TOKEN), (7, "future"), (2, "agent/1")), True)
pv("params-auth-missing-token", "auth without its required token", "auth",
   cmap((1, "device-7f3a")), False)
pv("params-auth-token-bytes", "auth token as a byte string instead of text",
   "auth", cmap((0, bstr(TOKEN.encode()))), False)
pv("params-auth-null", "auth with null params", "auth", None, False)
pv("params-auth-refresh-token-int", "auth.refresh token of the wrong type",
   "auth.refresh", cmap((0, 12345)), False)
pv("params-ping-any", "ping accepts any item as params", "ping",
   arr(1, "two", {3: 4.5}), True)
pv("params-subscribe-unknown-keys", "unknown keys (including a negative "
   "integer key) are ignored", "subscribe",
   cmap((0, "chat.room1"), (9, "future"), (-1, [1, 2]), (1, True)), True)
pv("params-subscribe-missing-topic", "subscribe without a topic", "subscribe",
   cmap((1, True)), False)
pv("params-subscribe-topic-int", "subscribe topic of the wrong type",
   "subscribe", cmap((0, 5)), False)
pv("params-subscribe-presence-int", "subscribe presence must be a bool",
   "subscribe", cmap((0, "chat.room1"), (1, 1)), False)
pv("params-subscribe-array", "params as an array instead of a map",
   "subscribe", ["chat.room1"], False)
pv("params-subscribe-text-key", "a text key in an integer-keyed params map",
   "subscribe", cmap((0, "chat.room1"), ("x", 1)), False)
pv("params-subscribe-keys-unordered", "typed map keys in any order",
   "subscribe", cmap((1, True), (0, "chat.room1")), True)
pv("params-subscribe-key-beyond-i64", "an integer key outside the signed "
   "64-bit range (2^63) makes a typed map invalid", "subscribe",
   cmap((0, "chat.room1"), (Raw(head(0, 2**63)), 1)), False)
pv("params-subscribe-tagged-topic", "a tag on a typed field (here the topic) "
   "makes the params invalid", "subscribe",
   cmap((0, Raw(head(6, 32) + tstr("chat.room1")))), False)
pv("params-publish-echo-undefined", "undefined is never a valid value of a "
   "typed field, not even an optional one", "publish",
   cmap((0, "a.b"), (1, 1), (2, Raw(b"\xf7"))), False)
pv("params-unsubscribe-empty-map", "unsubscribe with an empty map",
   "unsubscribe", {}, False)
pv("params-publish-unknown-keys", "unknown keys in publish params are ignored",
   "publish", cmap((0, "a.b"), (1, bstr(b"\x01\x02")), (9, "future"),
                   (2, False)), True)
pv("params-publish-missing-data", "publish without data", "publish",
   cmap((0, "a.b")), False)
pv("params-publish-echo-null", "an optional field given as null is absent",
   "publish", cmap((0, "a.b"), (1, 1), (2, None)), True)
pv("params-presence-get-limit-negative", "presence.get limit must be "
   "unsigned", "presence.get", cmap((0, "chat.room1"), (2, -1)), False)
pv("params-presence-set-missing-info", "presence.set requires info (null to "
   "clear)", "presence.set", {}, False)
pv("params-cancel-id-text", "cancel id of the wrong type", "cancel",
   cmap((0, "6")), False)
pv("params-event-from-int", "event from of the wrong type", "event",
   cmap((0, "a.b"), (1, 1), (2, 7)), False)
pv("params-presence-join-member-missing-user", "presence.join member without "
   "user", "presence.join", cmap((0, "a.b"), (1, cmap((0, "s-1")))), False)
pv("params-presence-leave-unknown-keys", "unknown keys inside the member are "
   "ignored", "presence.leave",
   cmap((0, "a.b"), (1, cmap((0, "s-1"), (1, "bob"), (5, True)))), True)
pv("params-token-expiring-missing", "token.expiring without expires_in_ms",
   "token.expiring", {}, False)
pv("params-closing-code-too-large", "closing code must fit 16 bits",
   "closing", cmap((0, 70000), (1, "bye")), False)

# Duplicate keys make a typed map invalid (protocol.md 4.8).
pv("params-subscribe-duplicate-key", "two entries for key 0: neither the "
   "first nor the last may be taken; invalid_params", "subscribe",
   cmap((0, "chat.room1"), (0, "chat.room2")), False)
pv("params-subscribe-duplicate-key-nonshortest", "key 0 twice, once as the "
   "non-shortest 18 00: the same key, so invalid_params even though both "
   "values are equal", "subscribe",
   cmap((0, "chat.room1"), (Raw(head(0, 0, 1)), "chat.room1")), False)
pv("params-publish-duplicate-unknown-key", "an unknown key (9) given twice "
   "also makes the map invalid", "publish",
   cmap((0, "a.b"), (1, 1), (9, 1), (9, 2)), False)
pv("params-publish-data-duplicate-keys", "a map inside the opaque data may "
   "repeat keys: it is not a typed map and is forwarded unchecked", "publish",
   cmap((0, "a.b"), (1, Raw(cmap(("k", 1), ("k", 2))))), True)

# Length bounds are method checks, not params rules (protocol.md 11.0,
# 11.4, 11.5; decision P15).
LONG = "x" * 2000
pv("params-subscribe-topic-2000-bytes", "a 2000-byte topic: the params are "
   "valid (no length in the params rule); the server then answers "
   "payload_too_large, a method check (max_topic_len <= 1024)", "subscribe",
   cmap((0, LONG)), True)
pv("params-unsubscribe-topic-2000-bytes", "unsubscribe's topic is any "
   "non-empty text, however long (the server answers not_found)",
   "unsubscribe", cmap((0, LONG)), True)
pv("params-unsubscribe-empty-topic", "unsubscribe's topic must not be empty: "
   "invalid_params", "unsubscribe", cmap((0, "")), False)
f, e = request(9, "m" * 2000, None)
params_vector("request-method-2000-bytes", "a method name has no length "
              "limit: a 2000-byte unknown name is a valid frame, answered "
              "method_not_found", f, e, "m" * 2000, False,
              error="method_not_found")

# ---------------------------------------------------------------------------
# Durable streams (protocol.md section 23). The frames of the examples there
# use the same values, so they agree byte for byte.
# ---------------------------------------------------------------------------

EPOCH = "9f3c2a61d04b7e15"
NS_EPOCH = "5be0d6a91c4f2e83"
ORDER = "orders.eu.1042"
A7 = cmap(("sku", "A-7"), ("qty", 2))
C9 = cmap(("sku", "C-9"), ("qty", 5))
EV41 = cmap((0, ORDER), (1, C9), (2, "bob"), (3, 41), (4, 1301))
EV42 = cmap((0, ORDER), (1, A7), (2, "alice"), (3, 42), (4, 1337))
EV1043 = cmap((0, "orders.eu.1043"), (1, cmap(("sku", "D-1"), ("qty", 1))),
              (2, "carol"), (3, 7), (4, 1335))

f, e = request(30, "publish", cmap((0, ORDER), (1, A7), (3, "checkout-7f3a"),
                                   (4, 17)))
valid("request-publish-durable-producer", "durable publish with producer id "
      "and sequence number (protocol.md 23.3)", f, e)
f, e = request(35, "publish", cmap((0, ORDER), (1, A7),
                                   (5, "order-1042-line-3")))
valid("request-publish-durable-key", "durable publish with an idempotency "
      "key", f, e)
f, e = request(32, "publish", cmap((0, ORDER), (1, cmap(("sku", "B-2"),
                                                        ("qty", 1))), (6, 41)))
valid("request-publish-durable-expected-offset", "compare-and-set publish: "
      "only if the topic's last offset is 41", f, e)
f, e = request(36, "publish", cmap((0, ORDER), (1, None), (2, False),
                                   (3, "p"), (4, 2**63 - 1), (5, "k"),
                                   (6, 0)))
valid("request-publish-durable-all-keys", "every durable key at once, seq at "
      "its greatest value 2^63-1, expected_offset 0 (no event yet)", f, e)

f, e = response_ok(30, cmap((0, 1), (1, 42), (2, EPOCH), (3, "fsynced"),
                            (5, 1337)))
valid("response-publish-durable", "durable publish result: offset, epoch, "
      "durability reached, position", f, e, result_of="publish")
f, e = response_ok(31, cmap((0, 0), (1, 42), (2, EPOCH), (3, "fsynced"),
                            (4, True), (5, 1337)))
valid("response-publish-duplicate", "a retried publish: not stored again, "
      "answered with the original offset and duplicate true", f, e,
      result_of="publish")
f, e = response_ok(37, cmap((0, 0), (2, EPOCH), (3, "committed"), (4, True)))
valid("response-publish-duplicate-pruned", "a duplicate whose original "
      "event retention removed: no offset, no position", f, e,
      result_of="publish")
f, e = response_ok(38, cmap((0, 3), (1, 1), (2, EPOCH), (3, "committed"),
                            (5, 1)))
valid("response-publish-durable-committed", "a publish in a namespace of "
      "durability committed: the first event of the namespace", f, e,
      result_of="publish")
f, e = response_ok(39, cmap((0, 1), (1, 43), (2, EPOCH), (3, "replicated"),
                            (5, 1338)))
valid("response-publish-durability-unknown", "a durability level this "
      "version does not know is still a valid result", f, e,
      result_of="publish")

f, e = response_err(32, "conflict", "expected offset differs from the "
                    "topic's last offset (42)", details=cmap((1, 42)))
valid("response-error-conflict-expected-offset", "expected_offset lost the "
      "race: conflict with details {1: last_offset}", f, e)
f, e = response_err(33, "conflict", "sequence number below the producer's "
                    "last (17) and never stored", details=cmap((0, 17)))
valid("response-error-conflict-seq", "a skipped producer sequence number: "
      "conflict with details {0: last_seq}", f, e)
f, e = response_err(34, "invalid_params", "producer, seq, key and "
                    "expected_offset are for durable topics only")
valid("response-error-durable-keys-plain-topic", "durable-only publish keys "
      "on a plain topic", f, e)
f, e = response_err(44, "unavailable", "storage unavailable, retry later", 500)
valid("response-error-unavailable-storage", "a storage failure: nothing was "
      "stored; retry after 500 ms", f, e)

f, e = notification("event", EV42)
valid("notification-event-durable", "an event of a durable topic carries "
      "offset and position", f, e)

f, e = request(40, "subscribe", cmap((0, ORDER)))
valid("request-subscribe-durable", "subscribe to a durable topic without "
      "since", f, e)
f, e = response_ok(40, cmap((0, EPOCH), (1, 42), (2, 1337)))
valid("response-subscribe-durable", "subscribe result of a durable topic: "
      "epoch, last offset, its position", f, e, result_of="subscribe")
f, e = response_ok(41, cmap((0, NS_EPOCH), (2, 1337)))
valid("response-subscribe-durable-pattern", "subscribe result of a pattern "
      "inside one namespace: the namespace's epoch and last position", f, e,
      result_of="subscribe")
f, e = response_ok(46, cmap((0, "a81c00f3b2d9e467"), (1, 0), (2, 0)))
valid("response-subscribe-durable-empty", "a durable topic nobody published "
      "on: still an epoch, offset 0", f, e, result_of="subscribe")
f, e = request(42, "subscribe", cmap((0, ORDER), (2, cmap((0, EPOCH),
                                                          (1, 40)))))
valid("request-subscribe-since-offset", "resume an exact durable topic after "
      "offset 40 of its epoch", f, e)
f, e = request(45, "subscribe", cmap((0, "orders.eu.*"),
                                     (2, cmap((0, NS_EPOCH), (2, 1300)))))
valid("request-subscribe-since-position", "resume a pattern after namespace "
      "position 1300", f, e)
f, e = request(47, "subscribe", cmap((0, ORDER), (1, True),
                                     (2, cmap((1, 0)))))
valid("request-subscribe-since-start", "since {1: 0} without epoch: "
      "everything still stored, any epoch; with presence", f, e)

f, e = chunk(42, 0, False, arr(EV41, EV42))
valid("chunk-resume-events", "a resume chunk: an array of event params in "
      "offset order", f, e, data_of="resume-events")
f, e = chunk(42, 1, True, cmap((0, "recovered"), (1, 2), (2, EPOCH),
                               (3, 42), (4, 1337)))
valid("chunk-resume-final-recovered", "final chunk of a resume: recovered, "
      "2 events, live from offset 42", f, e, data_of="resume-final")
f, e = chunk(48, 0, True, cmap((0, "recovered"), (1, 0), (2, EPOCH),
                               (3, 42), (4, 1337)))
valid("chunk-resume-final-up-to-date", "a resume with nothing missed: the "
      "final chunk alone, recovered 0", f, e, data_of="resume-final")
f, e = chunk(43, 0, True, cmap((0, "too_old"), (1, 0), (2, EPOCH), (3, 42),
                               (4, 1337), (5, 20)))
valid("chunk-resume-final-too-old", "retention removed events after since: "
      "too_old with the earliest complete offset", f, e,
      data_of="resume-final")
f, e = chunk(44, 0, True, cmap((0, "reset"), (1, 0),
                               (2, "c41d7a09e2b85f36"), (3, 3), (4, 1390)))
valid("chunk-resume-final-reset", "the epoch changed: reset, with the new "
      "epoch and the current offset", f, e, data_of="resume-final")
f, e = chunk(45, 1, True, cmap((0, "recovered"), (1, 2), (2, NS_EPOCH),
                               (3, 0), (4, 1337)))
valid("chunk-resume-final-pattern", "final chunk of a pattern resume: offset "
      "0, live from position 1337", f, e, data_of="resume-final")
f, e = chunk(49, 0, True, cmap((0, "rewound"), (1, 0), (2, EPOCH), (3, 42),
                               (4, 1337), (9, "future")))
valid("chunk-resume-final-unknown-outcome", "an outcome this version does "
      "not know (and an unknown key): valid; clients resync as for reset",
      f, e, data_of="resume-final")

f, e = request(50, "history", cmap((0, ORDER), (1, 42), (2, "backward"),
                                   (3, 2)))
valid("request-history", "history: two events backwards from offset 42", f,
      e)
f, e = request(53, "history", cmap((0, ORDER)))
valid("request-history-defaults", "history with only the topic: forward "
      "from the first offset, 100 events", f, e)
f, e = response_ok(50, cmap((0, arr(EV42, EV41)), (1, EPOCH), (2, 40),
                            (3, 20), (4, 42)))
valid("response-history", "a history page backwards, with next, first and "
      "last", f, e, result_of="history")
f, e = response_ok(54, cmap((0, []), (1, "a81c00f3b2d9e467"), (3, 1),
                            (4, 0)))
valid("response-history-empty", "history of a durable topic that never had "
      "an event: first 1, last 0, no next", f, e, result_of="history")
f, e = request(51, "history.latest", cmap((0, "orders.eu.*"), (2, 2)))
valid("request-history-latest", "history.latest of a pattern, two topics", f,
      e)
f, e = request(55, "history.latest", cmap((0, "orders.eu.*"),
                                          (1, "orders.eu.1043")))
valid("request-history-latest-after", "history.latest continuing after a "
      "topic", f, e)
f, e = response_ok(51, cmap((0, arr(EV42, EV1043)), (1, "orders.eu.1043")))
valid("response-history-latest", "the newest event of each topic, topics in "
      "byte order, with next", f, e, result_of="history.latest")
f, e = response_ok(55, cmap((0, [])))
valid("response-history-latest-end", "the last page of history.latest: "
      "possibly empty, no next", f, e, result_of="history.latest")

# Typed params of the durable keys and methods.
LONG_ID = "p" * 129
pv("params-publish-durable-keys", "producer, seq, key and expected_offset "
   "decode", "publish", cmap((0, ORDER), (1, 1), (3, "checkout-7f3a"),
                             (4, 17), (5, "k-1"), (6, 41)), True)
pv("params-publish-seq-text", "seq of the wrong type", "publish",
   cmap((0, ORDER), (1, 1), (3, "p"), (4, "17")), False)
pv("params-publish-seq-negative", "seq must be unsigned", "publish",
   cmap((0, ORDER), (1, 1), (3, "p"), (4, -1)), False)
pv("params-publish-seq-bignum", "seq 2^64 as a tag-2 bignum: not a uint",
   "publish", cmap((0, ORDER), (1, 1), (3, "p"),
                   (4, Raw(head(6, 2) + bstr(b"\x01" + b"\x00" * 8)))), False)
pv("params-publish-seq-2-63", "seq 2^63 is a uint, so the params decode; the "
   "server then answers invalid_params, a method check (seq <= 2^63-1, "
   "protocol.md 23.3)", "publish",
   cmap((0, ORDER), (1, 1), (3, "p"), (4, 2**63)), True)
pv("params-publish-seq-zero", "seq 0 decodes; the server answers "
   "invalid_params, a method check (seq >= 1)", "publish",
   cmap((0, ORDER), (1, 1), (3, "p"), (4, 0)), True)
pv("params-publish-producer-int", "producer of the wrong type", "publish",
   cmap((0, ORDER), (1, 1), (3, 7), (4, 1)), False)
pv("params-publish-producer-129-bytes", "a 129-byte producer id decodes; "
   "the server answers invalid_params, a method check (1-128 bytes)",
   "publish", cmap((0, ORDER), (1, 1), (3, LONG_ID), (4, 1)), True)
pv("params-publish-producer-without-seq", "producer without seq decodes; "
   "the server answers invalid_params, a method check (they go together)",
   "publish", cmap((0, ORDER), (1, 1), (3, "p")), True)
pv("params-publish-key-bytes", "idempotency key as a byte string", "publish",
   cmap((0, ORDER), (1, 1), (5, bstr(b"k-1"))), False)
pv("params-publish-key-empty", "an empty key decodes; the server answers "
   "invalid_params, a method check (1-128 bytes)", "publish",
   cmap((0, ORDER), (1, 1), (5, "")), True)
pv("params-publish-expected-offset-negative", "expected_offset must be "
   "unsigned", "publish", cmap((0, ORDER), (1, 1), (6, -1)), False)
pv("params-publish-expected-offset-null", "expected_offset null means "
   "absent", "publish", cmap((0, ORDER), (1, 1), (6, None)), True)
pv("params-publish-duplicate-seq", "seq given twice: invalid_params "
   "(protocol.md 4.8)", "publish",
   cmap((0, ORDER), (1, 1), (3, "p"), (4, 1), (4, 2)), False)
pv("params-subscribe-since-offset", "since with epoch and offset decodes",
   "subscribe", cmap((0, ORDER), (2, cmap((0, EPOCH), (1, 40)))), True)
pv("params-subscribe-since-int", "since must be a map", "subscribe",
   cmap((0, ORDER), (2, 40)), False)
pv("params-subscribe-since-offset-text", "since offset of the wrong type",
   "subscribe", cmap((0, ORDER), (2, cmap((1, "40")))), False)
pv("params-subscribe-since-epoch-int", "since epoch of the wrong type",
   "subscribe", cmap((0, ORDER), (2, cmap((0, 7), (1, 40)))), False)
pv("params-subscribe-since-position-negative", "since position must be "
   "unsigned", "subscribe", cmap((0, "orders.eu.*"), (2, cmap((2, -5)))),
   False)
pv("params-subscribe-since-empty", "since {} decodes; the server answers "
   "invalid_params, a method check (an exact topic needs offset, a pattern "
   "position)", "subscribe", cmap((0, ORDER), (2, {})), True)
pv("params-subscribe-since-both", "since with offset and position decodes; "
   "the server answers invalid_params, a method check", "subscribe",
   cmap((0, ORDER), (2, cmap((1, 1), (2, 1)))), True)
pv("params-subscribe-since-duplicate-key", "since is a typed map too: two "
   "entries for its key 1 make the params invalid (protocol.md 4.8)",
   "subscribe", cmap((0, ORDER), (2, cmap((1, 40), (1, 41)))), False)
pv("params-history-valid", "history with every key", "history",
   cmap((0, ORDER), (1, 42), (2, "backward"), (3, 2)), True)
pv("params-history-missing-topic", "history without a topic", "history",
   cmap((1, 42)), False)
pv("params-history-from-text", "history from of the wrong type", "history",
   cmap((0, ORDER), (1, "42")), False)
pv("params-history-direction-int", "history direction must be text",
   "history", cmap((0, ORDER), (2, 1)), False)
pv("params-history-direction-unknown", "an unknown direction text decodes; "
   "the server answers invalid_params, a method check", "history",
   cmap((0, ORDER), (2, "sideways")), True)
pv("params-history-limit-negative", "history limit must be unsigned",
   "history", cmap((0, ORDER), (3, -1)), False)
pv("params-history-limit-zero", "limit 0 decodes; the server answers "
   "invalid_params, a method check (at least 1)", "history",
   cmap((0, ORDER), (3, 0)), True)
pv("params-history-duplicate-key", "history with key 3 twice", "history",
   cmap((0, ORDER), (3, 1), (3, 2)), False)
pv("params-history-latest-valid", "history.latest with every key",
   "history.latest", cmap((0, "orders.eu.*"), (1, "orders.eu.1042"), (2, 5)),
   True)
pv("params-history-latest-pattern-int", "history.latest pattern of the "
   "wrong type", "history.latest", cmap((0, 5)), False)
pv("params-history-latest-after-int", "history.latest after must be text",
   "history.latest", cmap((0, "orders.>"), (1, 3)), False)
pv("params-history-latest-null", "history.latest with null params",
   "history.latest", None, False)

# ---------------------------------------------------------------------------
# Record sync (protocol.md 24): sync.push, sync.pull, sync.info
# ---------------------------------------------------------------------------

SPACE = "user.alice.notes"
CLIENT = "phone-7f3a"
SEPOCH = "5e0c7a91d24b38f6"
HLC0 = (1700000000000 << 16) | 3          # 0x018bcfe568000003
HLC1 = (1700000000500 << 16) | 0
SHLC = (1700000000600 << 16) | 1
USAGE = cmap((0, 2), (1, 33))

f, e = request(60, "sync.push", cmap(
    (0, SPACE), (1, CLIENT), (2, 7), (3, HLC0),
    (4, arr(cmap((0, "put"), (1, "notes"), (2, "n1"), (3, bstr(b"hello")),
                 (5, 0))))))
valid("request-sync-push-put", "sync.push: one put of an opaque value that "
      "must not exist yet (expected_version 0)", f, e)
f, e = request(61, "sync.push", cmap(
    (0, SPACE), (1, CLIENT), (2, 8), (3, HLC1),
    (4, arr(cmap((0, "patch"), (1, "notes"), (2, "n2"),
                 (4, cmap(("title", bstr(b"Groceries")), ("done", None))),
                 (6, HLC0), (7, 1700086400000)),
            cmap((0, "delete"), (1, "notes"), (2, "n3"), (5, 4)),
            cmap((0, "put"), (1, "tasks"), (2, "t1"),
                 (4, cmap(("a", bstr(b"\x01"))))))),
    (5, True)))
valid("request-sync-push-all-ops", "sync.push with a patch (own hlc, a "
      "removed field, an expiry), a delete with expected_version, a put of "
      "fields, and return_values", f, e)
f, e = response_ok(60, cmap((0, 12), (1, SHLC), (2, USAGE), (3, False),
                            (4, arr(cmap((0, "notes"), (1, "n1"),
                                         (2, 1))))))
valid("response-sync-push", "sync.push ack: committed position 12, the hub's "
      "HLC, usage, not a duplicate, the new version", f, e,
      result_of="sync.push")
f, e = response_ok(62, cmap((0, 12), (1, SHLC), (2, USAGE), (3, True),
                            (4, [])))
valid("response-sync-push-duplicate", "a retried push (seq already applied): "
      "duplicate, nothing applied, the current position and usage", f, e,
      result_of="sync.push")
f, e = response_err(61, "conflict", "1 record(s) changed since the expected "
                    "version",
                    details=cmap((0, arr(cmap((0, "notes"), (1, "n3"),
                                              (2, 5), (3, False),
                                              (4, cmap(("", bstr(b"v5")))))))))
valid("response-error-conflict-sync-push", "sync.push conflict: the current "
      "version of each mismatched record, with its fields (return_values)",
      f, e)
f, e = response_err(63, "conflict", "1 record(s) changed since the expected "
                    "version",
                    details=cmap((0, arr(cmap((0, "notes"), (1, "n9"),
                                              (2, 3), (3, True))))))
valid("response-error-conflict-sync-push-tombstone", "sync.push conflict on a "
      "deleted record: version 3, deleted, no fields", f, e)
f, e = response_err(64, "conflict", "the tombstone horizon passed the cursor "
                    "during the pull; pull again")
valid("response-error-conflict-sync-pull", "a running sync.pull whose cursor "
      "the tombstone horizon passed: conflict without details, pull again",
      f, e)

f, e = request(65, "sync.pull", cmap((0, SPACE)))
valid("request-sync-pull-snapshot", "sync.pull without a cursor: a snapshot "
      "of the live records", f, e)
f, e = request(66, "sync.pull", cmap((0, SPACE), (1, 12), (2, SEPOCH),
                                     (3, "notes"), (4, 100), (5, True),
                                     (6, False)))
valid("request-sync-pull-live", "sync.pull after cursor 12 of an epoch, one "
      "collection, 100 records per chunk, staying live", f, e)
REC1 = cmap((0, "notes"), (1, "n1"), (2, 1), (3, 12), (4, False),
            (5, cmap(("", bstr(b"hello")))), (6, HLC0), (7, CLIENT))
REC2 = cmap((0, "notes"), (1, "n3"), (2, 5), (3, 13), (4, True),
            (6, SHLC), (7, ""))
REC3 = cmap((0, "notes"), (1, "n2"), (2, 2), (3, 14), (4, False),
            (5, cmap(("title", bstr(b"Groceries")))), (6, HLC0), (7, CLIENT),
            (8, 1700086400000))
f, e = chunk(66, 0, False, cmap((0, arr(REC1, REC2)), (1, 13)))
valid("chunk-sync-pull", "a sync.pull chunk: a live record and a tombstone "
      "(stamped by the hub, actor \"\") in position order, cursor 13", f, e,
      data_of="sync-chunk")
SFINAL = cmap((0, 14), (1, 3), (2, SEPOCH), (3, False),
              (4, arr(cmap((0, "notes"), (1, 2), (2, 0x1e2218b970680930)))),
              (5, 0))
f, e = chunk(65, 1, True, SFINAL)
valid("chunk-sync-pull-final", "the final chunk of a sync.pull: cursor, "
      "count, epoch, not a reset, per-collection checksums, horizon", f, e,
      data_of="sync-final")
f, e = chunk(66, 1, False, SFINAL)
valid("chunk-sync-pull-final-live", "with live the end of the catch-up is a "
      "non-final chunk (the stream goes on with live chunks); its data has "
      "key 0 a uint, where a sync-chunk has an array", f, e,
      data_of="sync-final")
f, e = chunk(67, 0, True, cmap((0, 14), (1, 0), (2, SEPOCH), (3, True),
                               (4, []), (5, 9)))
valid("chunk-sync-pull-final-reset", "a cursor older than the horizon: reset "
      "(the client drops its state; here the space is empty)", f, e,
      data_of="sync-final")
f, e = chunk(66, 2, False, cmap((0, arr(REC3)), (1, 14), (2, 13)))
valid("chunk-sync-live", "a live chunk after the final: one commit, from "
      "cursor 13 to 14", f, e, data_of="sync-chunk")
f, e = chunk(68, 3, False, cmap((0, []), (1, 17), (2, 14)))
valid("chunk-sync-live-notify-only", "a live chunk with notify_only: no "
      "records, only the previous and the new cursor", f, e,
      data_of="sync-chunk")

f, e = request(69, "sync.info", cmap((0, SPACE)))
valid("request-sync-info", "sync.info of a space", f, e)
f, e = response_ok(69, cmap((0, 14), (1, SEPOCH), (2, USAGE),
                            (3, cmap((0, 100000), (1, 67108864))), (4, 0),
                            (5, arr(cmap((0, "notes"), (1, 2), (2, 33),
                                         (3, 14),
                                         (4, 0x1e2218b970680930))))))
valid("response-sync-info", "sync.info result: position, epoch, usage, "
      "limits, horizon and the collections", f, e, result_of="sync.info")
f, e = response_ok(70, cmap((0, 0), (1, ""), (2, cmap((0, 0), (1, 0))),
                            (3, cmap((0, 100000), (1, 67108864))), (4, 0),
                            (5, [])))
valid("response-sync-info-empty", "sync.info of a space never written: "
      "position 0, no epoch yet", f, e, result_of="sync.info")
f, e = response_err(71, "forbidden", "may not write user.bob.notes")
valid("response-error-forbidden-sync", "sync.push on a space the token's "
      "sync_write patterns do not grant", f, e)

# Typed params of the sync methods.
PUT = cmap((0, "put"), (1, "notes"), (2, "n1"), (3, bstr(b"x")))
pv("params-sync-push-valid", "sync.push with every key", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
        (4, arr(cmap((0, "patch"), (1, "notes"), (2, "n1"),
                     (4, cmap(("a", None))), (5, 3), (6, HLC0), (7, 5)))),
        (5, False)), True)
pv("params-sync-push-no-ops", "sync.push without key 4 (ops)", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0)), False)
pv("params-sync-push-no-hlc", "sync.push without key 3 (hlc)", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (4, arr(PUT))), False)
pv("params-sync-push-seq-text", "seq of the wrong type", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, "1"), (3, HLC0), (4, arr(PUT))), False)
pv("params-sync-push-hlc-negative", "hlc must be unsigned", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, -1), (4, arr(PUT))), False)
pv("params-sync-push-value-text", "a put value must be bytes", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
        (4, arr(cmap((0, "put"), (1, "notes"), (2, "n1"), (3, "x"))))),
   False)
pv("params-sync-push-field-text", "a field value must be bytes or null",
   "sync.push", cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
                     (4, arr(cmap((0, "patch"), (1, "notes"), (2, "n1"),
                                  (4, cmap(("a", "x"))))))), False)
pv("params-sync-push-field-twice", "a field name twice in one op",
   "sync.push", cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
                     (4, arr(cmap((0, "patch"), (1, "notes"), (2, "n1"),
                                  (4, cmap(("a", bstr(b"1")), ("a", None))))))),
   False)
pv("params-sync-push-op-no-id", "an op without key 2 (id)", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
        (4, arr(cmap((0, "delete"), (1, "notes"))))), False)
pv("params-sync-push-unknown-kind", "an op kind this version does not know "
   "decodes; the server answers invalid_params, a method check", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
        (4, arr(cmap((0, "merge"), (1, "notes"), (2, "n1"))))), True)
pv("params-sync-push-empty-ops", "an empty ops array decodes; the server "
   "answers invalid_params, a method check (at least one op)", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0), (4, [])), True)
pv("params-sync-push-seq-zero", "seq 0 decodes; the server answers "
   "invalid_params, a method check (seq >= 1)", "sync.push",
   cmap((0, SPACE), (1, CLIENT), (2, 0), (3, HLC0), (4, arr(PUT))), True)
pv("params-sync-push-put-value-and-fields", "a put with both value and "
   "fields decodes; the server answers invalid_params, a method check",
   "sync.push", cmap((0, SPACE), (1, CLIENT), (2, 1), (3, HLC0),
                     (4, arr(cmap((0, "put"), (1, "notes"), (2, "n1"),
                                  (3, bstr(b"x")), (4, cmap(("a", bstr(b"y")))))))),
   True)
pv("params-sync-push-duplicate-key", "sync.push with key 2 twice",
   "sync.push", cmap((0, SPACE), (1, CLIENT), (2, 1), (2, 2), (3, HLC0),
                     (4, arr(PUT))), False)
pv("params-sync-pull-valid", "sync.pull with every key", "sync.pull",
   cmap((0, SPACE), (1, 12), (2, SEPOCH), (3, "notes"), (4, 10), (5, True),
        (6, True)), True)
pv("params-sync-pull-no-space", "sync.pull without key 0", "sync.pull",
   cmap((1, 12)), False)
pv("params-sync-pull-cursor-text", "cursor of the wrong type", "sync.pull",
   cmap((0, SPACE), (1, "12")), False)
pv("params-sync-pull-live-int", "live must be a bool", "sync.pull",
   cmap((0, SPACE), (5, 1)), False)
pv("params-sync-info-valid", "sync.info with its space", "sync.info",
   cmap((0, SPACE)), True)
pv("params-sync-info-space-int", "sync.info space of the wrong type",
   "sync.info", cmap((0, 5)), False)
pv("params-sync-info-null", "sync.info with null params", "sync.info", None,
   False)

# ---------------------------------------------------------------------------
# Routed RPC (protocol.md 25): rpc.register, rpc.unregister, rpc.call,
# rpc.list, the rpc.invoke request the hub sends a callee, rpc.credit
# ---------------------------------------------------------------------------

PROC = "svc.resize"
f, e = request(70, "rpc.register", cmap((0, PROC), (1, "round_robin"),
                                        (2, 4), (3, arr("email"))))
valid("request-rpc-register", "rpc.register: a shared round-robin "
      "registration, 4 calls at a time, disclosing the caller's email", f, e)
f, e = response_ok(70, cmap((0, 7)))
valid("response-rpc-register", "rpc.register result: registration 7", f, e,
      result_of="rpc.register")
f, e = request(71, "rpc.unregister", cmap((0, 7)))
valid("request-rpc-unregister", "rpc.unregister of registration 7", f, e)
f, e = response_ok(71, cmap())
valid("response-rpc-unregister", "rpc.unregister result: {}", f, e,
      result_of="rpc.unregister")
CALL_ARGS = cmap((0, "img-42"), (1, 256))
f, e = request(72, "rpc.call", cmap((0, PROC), (1, CALL_ARGS), (2, 5000),
                                    (3, "img-42")))
valid("request-rpc-call", "rpc.call with params, a 5 s deadline and an "
      "affinity key", f, e)
f, e = response_ok(72, cmap((0, "ok"), (1, 2048)))
valid("response-rpc-call", "rpc.call result: the callee's result, "
      "unchanged", f, e, result_of="rpc.call")
f, e = chunk(72, 0, False, cmap((0, 50)))
valid("chunk-rpc-call-progress", "a progressive result of rpc.call: the "
      "callee's chunk data, relayed unchanged under the caller's id", f, e)
f, e = chunk(72, 1, True, cmap((0, "ok"), (1, 2048)))
valid("chunk-rpc-call-final", "the final chunk of a streamed rpc.call: "
      "the callee's final data", f, e)
f, e = request(1, "rpc.invoke", cmap(
    (0, 9), (1, 7), (2, PROC), (3, CALL_ARGS), (4, 4980),
    (5, cmap((0, "carol"), (1, cmap(("email", "carol@example.com"))))),
    (6, 16)))
valid("request-rpc-invoke", "from the server: the hub invokes call 9 at "
      "the callee of registration 7, with the params, 4980 ms left, the "
      "attested caller with the disclosed claim, and a window of 16 chunks",
      f, e)
f, e = notification("rpc.credit", cmap((0, 9), (1, 8)))
valid("notification-rpc-credit", "from the server: the callee of call 9 "
      "may send 8 more chunks", f, e)
f, e = request(73, "rpc.list", cmap())
valid("request-rpc-list", "rpc.list, first page", f, e)
f, e = response_ok(73, cmap((0, arr(cmap(
    (0, PROC), (1, "round_robin"),
    (2, arr(cmap((0, 7), (1, "svc-a"), (2, "0a1b2c3d-5"), (3, 1), (4, 4)))),
    (3, 0))))))
valid("response-rpc-list", "rpc.list result: one procedure with one "
      "callee holding one call", f, e, result_of="rpc.list")
f, e = response_err(72, "no_callee", "no callee registered this procedure")
valid("response-error-no-callee", "rpc.call of a procedure nobody "
      "registered: answered at once", f, e)
f, e = response_err(72, "callee_lost",
                    "the callee left with the call in flight")
valid("response-error-callee-lost", "rpc.call whose callee's session ended "
      "with the call in flight", f, e)

pv("params-rpc-register-valid", "rpc.register with every key",
   "rpc.register", cmap((0, PROC), (1, "affinity"), (2, 1),
                        (3, arr("email", "org"))), True)
pv("params-rpc-register-minimal", "rpc.register with only its procedure",
   "rpc.register", cmap((0, PROC)), True)
pv("params-rpc-register-no-procedure", "rpc.register without key 0",
   "rpc.register", cmap((1, "single")), False)
pv("params-rpc-register-policy-int", "a policy must be text",
   "rpc.register", cmap((0, PROC), (1, 2)), False)
pv("params-rpc-register-disclose-text", "disclose_caller must be an array",
   "rpc.register", cmap((0, PROC), (3, "email")), False)
pv("params-rpc-unregister-valid", "rpc.unregister of a registration",
   "rpc.unregister", cmap((0, 7)), True)
pv("params-rpc-unregister-text", "a registration must be a uint",
   "rpc.unregister", cmap((0, "7")), False)
pv("params-rpc-call-valid", "rpc.call with every key", "rpc.call",
   cmap((0, PROC), (1, CALL_ARGS), (2, 100), (3, "k")), True)
pv("params-rpc-call-minimal", "rpc.call with only its procedure (params "
   "default to null)", "rpc.call", cmap((0, PROC)), True)
pv("params-rpc-call-no-procedure", "rpc.call without key 0", "rpc.call",
   cmap((1, 5)), False)
pv("params-rpc-call-timeout-negative", "timeout_ms must be unsigned",
   "rpc.call", cmap((0, PROC), (2, -1)), False)
pv("params-rpc-list-valid", "rpc.list with after and limit", "rpc.list",
   cmap((0, PROC), (1, 10)), True)
pv("params-rpc-list-limit-text", "limit must be a uint", "rpc.list",
   cmap((1, "10")), False)
pv("params-rpc-credit-valid", "rpc.credit of call 9", "rpc.credit",
   cmap((0, 9), (1, 8)), True)
pv("params-rpc-credit-no-chunks", "rpc.credit without key 1", "rpc.credit",
   cmap((0, 9)), False)
pv("params-rpc-invoke-valid", "rpc.invoke from the server without "
   "disclosed claims", "rpc.invoke",
   cmap((0, 9), (1, 7), (2, PROC), (3, None), (4, 100), (5, cmap((0, "bob"))),
        (6, 16)), True, id_=2)
pv("params-rpc-invoke-no-caller", "rpc.invoke without key 5 (caller)",
   "rpc.invoke",
   cmap((0, 9), (1, 7), (2, PROC), (3, None), (4, 100), (6, 16)), False,
   id_=3)

# ---------------------------------------------------------------------------
# Decoder errors: CBOR well-formedness
# ---------------------------------------------------------------------------

PING = arr(0, 1, "ping", NULL)
invalid("empty-input", "zero bytes", b"", "Truncated")
invalid("truncated-array-elements", "array of 4 with only 2 elements",
        PING[:3], "Truncated")
invalid("truncated-method-text", "input ends inside the method text",
        PING[:6], "Truncated")
invalid("truncated-params", "input ends before the params item", PING[:-1],
        "Truncated")
invalid("truncated-uint-argument", "input ends inside a 2-byte id argument",
        b"\x84\x00\x19\x01", "Truncated")
invalid("truncated-chunk-data", "byte string length points past the input",
        arr(3, 9, 0, True, Raw(head(2, 100) + b"\x00" * 10)), "Truncated")
invalid("truncated-huge-array-count", "params array claiming 2^64-1 elements",
        arr(0, 1, "ping", Raw(head(4, U64_MAX, 8))), "Truncated")
invalid("truncated-map-value", "params map missing its last value",
        head(4, 4) + b"\x00\x01" + tstr("ping") + head(5, 1) + b"\x00",
        "Truncated")
invalid("trailing-byte", "a zero byte after a complete frame", PING + b"\x00",
        "TrailingBytes")
invalid("trailing-second-frame", "two frames in one message", PING + PING,
        "TrailingBytes")
invalid("indefinite-array-frame", "the frame as an indefinite-length array",
        b"\x9f\x00\x01" + tstr("ping") + b"\xf6\xff", "IndefiniteLength")
invalid("indefinite-map-params", "params as an indefinite-length map",
        arr(0, 1, "subscribe", Raw(b"\xbf\x00" + tstr("a.b") + b"\xff")),
        "IndefiniteLength")
invalid("indefinite-bytes-data", "chunk data as an indefinite-length byte "
        "string", arr(3, 9, 0, True, Raw(b"\x5f\x41\x00\xff")),
        "IndefiniteLength")
invalid("indefinite-text-method", "method as an indefinite-length text string",
        head(4, 4) + b"\x00\x01" + b"\x7f" + tstr("ping") + b"\xff\xf6",
        "IndefiniteLength")
invalid("break-top-level", "a lone break byte", b"\xff", "Malformed")
invalid("break-as-params", "a break byte where params belong",
        arr(0, 1, "ping", Raw(b"\xff")), "Malformed")
invalid("reserved-ai-28", "additional information 28 in the id",
        arr(0, Raw(b"\x1c"), "ping", NULL), "Malformed")
invalid("reserved-ai-29", "additional information 29 (negative integer) in "
        "params", arr(0, 1, "ping", Raw(b"\x3d")), "Malformed")
invalid("reserved-ai-30", "additional information 30 (major type 7) in "
        "params", arr(0, 1, "ping", Raw(b"\xfe")), "Malformed")
invalid("reserved-ai-31-uint", "additional information 31 on an unsigned "
        "integer (no indefinite form exists)",
        arr(0, Raw(b"\x1f"), "ping", NULL), "Malformed")
invalid("reserved-ai-31-tag", "additional information 31 on a tag",
        arr(0, 1, "ping", Raw(b"\xdf\x00")), "Malformed")
invalid("simple-two-byte-below-32", "simple value 20 in its two-byte form "
        "(f8 14)", arr(0, 1, "ping", Raw(b"\xf8\x14")), "Malformed")
invalid("invalid-utf8-method", "method text is not UTF-8",
        arr(0, 1, Raw(tstr(b"pi\xc3\x28")), NULL), "InvalidUtf8")
invalid("invalid-utf8-params", "a text string inside params is not UTF-8",
        arr(0, 1, "subscribe", cmap((0, Raw(tstr(b"chat.\xff"))))),
        "InvalidUtf8")
invalid("invalid-utf8-surrogate", "an encoded UTF-16 surrogate (ed a0 80) is "
        "not UTF-8", arr(2, "event", cmap((0, "a.b"),
                                           (1, Raw(tstr(b"\xed\xa0\x80"))))),
        "InvalidUtf8")

# ---------------------------------------------------------------------------
# Decoder errors: the envelope
# ---------------------------------------------------------------------------

invalid("envelope-map", "the frame is a map, not an array",
        cmap((0, 0), (1, 1)), "InvalidEnvelope")
invalid("envelope-int", "the frame is an integer", b"\x00", "InvalidEnvelope")
invalid("envelope-tagged", "a tagged frame (self-described CBOR tag 55799) is "
        "not an array", head(6, 55799) + PING, "InvalidEnvelope")
invalid("envelope-empty-array", "an empty array", b"\x80", "InvalidEnvelope")
invalid("kind-text", "kind as a text string", arr("0", 1, "ping", NULL),
        "InvalidEnvelope")
invalid("kind-negative", "kind -1", arr(-1, 1, "ping", NULL),
        "InvalidEnvelope")
invalid("kind-4", "unknown frame kind 4", arr(4, 1, "ping", NULL),
        "UnknownKind")
invalid("kind-99", "unknown frame kind 99", arr(99, 1, "x", NULL, 0),
        "UnknownKind")
invalid("kind-max", "unknown frame kind 2^64-1 alone in its array",
        arr(U64_MAX), "UnknownKind")
invalid("too-few-kind-only", "a request kind and nothing else", arr(0),
        "InvalidEnvelope")
invalid("too-few-request", "request without params", arr(0, 1, "ping"),
        "InvalidEnvelope")
invalid("too-few-response", "response without result", arr(1, 1, 0),
        "InvalidEnvelope")
invalid("too-few-notification", "notification without params",
        arr(2, "event"), "InvalidEnvelope")
invalid("too-few-chunk", "chunk without data", arr(3, 9, 0, True),
        "InvalidEnvelope")
invalid("kind-tagged", "a tag on the kind", arr(Raw(head(6, 1) + b"\x00"), 1,
                                               "ping", NULL),
        "InvalidEnvelope")
invalid("id-negative", "request id -1", arr(0, -1, "ping", NULL),
        "InvalidEnvelope")
invalid("id-text", "request id as text", arr(0, "1", "ping", NULL),
        "InvalidEnvelope")
invalid("id-float", "request id 1.0 (single-precision float)",
        arr(0, Raw(b"\xfa\x3f\x80\x00\x00"), "ping", NULL), "InvalidEnvelope")
invalid("id-bignum", "request id as a tag-2 bignum",
        arr(0, Raw(head(6, 2) + bstr(b"\x01" + b"\x00" * 8)), "ping", NULL),
        "InvalidEnvelope")
invalid("response-id-negative", "response id -1", arr(1, -1, 0, NULL),
        "InvalidEnvelope")
invalid("chunk-id-text", "chunk id as text", arr(3, "9", 0, True, NULL),
        "InvalidEnvelope")
invalid("method-bytes", "method as a byte string",
        arr(0, 1, bstr(b"ping"), NULL), "InvalidEnvelope")
invalid("method-int", "method as an integer", arr(0, 1, 7, NULL),
        "InvalidEnvelope")
invalid("method-empty", "empty method name", arr(0, 1, "", NULL),
        "InvalidEnvelope")
invalid("notification-method-null", "notification method null",
        arr(2, None, NULL), "InvalidEnvelope")
invalid("notification-method-empty", "empty notification method name",
        arr(2, "", NULL), "InvalidEnvelope")
invalid("seq-negative", "chunk seq -1", arr(3, 9, -1, True, NULL),
        "InvalidEnvelope")
invalid("seq-text", "chunk seq as text", arr(3, 9, "0", True, NULL),
        "InvalidEnvelope")
invalid("final-int", "chunk final as the integer 1", arr(3, 9, 0, 1, NULL),
        "InvalidEnvelope")
invalid("final-null", "chunk final null", arr(3, 9, 0, None, NULL),
        "InvalidEnvelope")
invalid("status-2", "response status 2", arr(1, 1, 2, NULL),
        "InvalidEnvelope")
invalid("status-text", "response status as text", arr(1, 1, "ok", NULL),
        "InvalidEnvelope")
invalid("error-missing-code", "error object without code",
        arr(1, 1, 1, cmap((1, "oops"))), "InvalidEnvelope")
invalid("error-code-int", "error code as an integer",
        arr(1, 1, 1, cmap((0, 5), (1, "oops"))), "InvalidEnvelope")
invalid("error-code-tagged", "a tag on the error code",
        arr(1, 1, 1, cmap((0, Raw(head(6, 32) + tstr("internal"))),
                          (1, "oops"))), "InvalidEnvelope")
invalid("error-key-beyond-i64", "an error object key outside the signed "
        "64-bit range makes the error object, so the frame, invalid",
        arr(1, 1, 1, cmap((0, "internal"), (1, "oops"),
                          (Raw(head(0, U64_MAX)), 0))), "InvalidEnvelope")
invalid("error-duplicate-key", "an error object with two entries for key 0 "
        "is invalid, so the frame is undecodable (protocol.md 4.8)",
        arr(1, 1, 1, cmap((0, "internal"), (1, "oops"), (0, "timeout"))),
        "InvalidEnvelope")
invalid("error-missing-message", "error object without message",
        arr(1, 1, 1, cmap((0, "internal"))), "InvalidEnvelope")
invalid("error-message-bytes", "error message as a byte string",
        arr(1, 1, 1, cmap((0, "internal"), (1, bstr(b"oops")))),
        "InvalidEnvelope")
invalid("error-retry-negative", "retry_after_ms -1",
        arr(1, 1, 1, cmap((0, "rate_limited"), (1, "slow down"), (2, -1))),
        "InvalidEnvelope")
invalid("error-bytes", "error object as a byte string",
        arr(1, 1, 1, bstr(b"oops")), "InvalidEnvelope")
invalid("error-array", "error object as an array",
        arr(1, 1, 1, arr("internal", "oops")), "InvalidEnvelope")
invalid("error-null", "error object null", arr(1, 1, 1, NULL),
        "InvalidEnvelope")

# ---------------------------------------------------------------------------
# Self-check with cbor2 and writing
# ---------------------------------------------------------------------------


def check(v):
    b = bytes.fromhex(v["cbor_hex"])
    if not v["valid"]:
        return
    frame = cbor2.loads(b)
    x = v["expect"]
    assert isinstance(frame, list), v["name"]
    kinds = {"request": 0, "response": 1, "notification": 2, "chunk": 3}
    assert frame[0] == kinds[x["kind"]], v["name"]

    def item(key, got):
        assert cbor2.loads(bytes.fromhex(x[key])) == got, (v["name"], key)

    if x["kind"] == "request":
        assert frame[1] == x["id"] and frame[2] == x["method"], v["name"]
        item("params_hex", frame[3])
    elif x["kind"] == "notification":
        assert frame[1] == x["method"], v["name"]
        item("params_hex", frame[2])
    elif x["kind"] == "chunk":
        assert frame[1:4] == [x["id"], x["seq"], x["final"]], v["name"]
        item("data_hex", frame[4])
    else:
        assert frame[1] == x["id"], v["name"]
        if "error" in x:
            assert frame[2] == 1, v["name"]
            err = frame[3]
            assert err[0] == x["error"]["code"], v["name"]
            assert err[1] == x["error"]["message"], v["name"]
            assert err.get(2) == x["error"].get("retry_after_ms"), v["name"]
        else:
            assert frame[2] == 0, v["name"]
            item("result_hex", frame[3])
    if "canonical_hex" in v:
        # The canonical form decodes to the same envelope minus extras.
        c = cbor2.loads(bytes.fromhex(v["canonical_hex"]))
        assert c[:-1] == frame[:len(c) - 1], v["name"]
        last = frame[len(c) - 1]
        if isinstance(c[-1], dict):
            assert c[-1].items() <= last.items(), v["name"]
        else:
            assert c[-1] == last, v["name"]


# ---------------------------------------------------------------------------
# The examples of docs/protocol.md
# ---------------------------------------------------------------------------
#
# protocol.md promises that every example was produced with a CBOR encoder.
# Each ```cbor-diag block there is followed by a hex block (possibly
# annotated, `#` starts a comment) and sometimes by "N bytes: `hex`"; a
# heading may say "(N bytes)". The check parses the diagnostic notation (the
# subset the document uses: integers, text, h'..', arrays, maps, true, false,
# null), encodes it with cbor2 and compares every form of the bytes.

DOC = OUT.parent.parent / "docs" / "protocol.md"


class _DiagParser:
    def __init__(self, text):
        self.t, self.i = text, 0

    def ws(self):
        while self.i < len(self.t) and self.t[self.i] in " \t\r\n":
            self.i += 1

    def eat(self, c):
        self.ws()
        assert self.t.startswith(c, self.i), (c, self.t[self.i:self.i + 20])
        self.i += len(c)

    def value(self):
        self.ws()
        c = self.t[self.i]
        if c == "[":
            self.i += 1
            items = []
            self.ws()
            if self.t[self.i] == "]":
                self.i += 1
                return items
            while True:
                items.append(self.value())
                self.ws()
                if self.t[self.i] == "]":
                    self.i += 1
                    return items
                self.eat(",")
        if c == "{":
            self.i += 1
            pairs = []
            self.ws()
            if self.t[self.i] == "}":
                self.i += 1
                return {}
            while True:
                k = self.value()
                self.eat(":")
                pairs.append((k, self.value()))
                self.ws()
                if self.t[self.i] == "}":
                    self.i += 1
                    keys = [k for k, _ in pairs]
                    assert len(set(map(repr, keys))) == len(keys), keys
                    return dict(pairs)
                self.eat(",")
        if c == '"':
            end = self.i + 1
            while self.t[end] != '"':
                end += 2 if self.t[end] == "\\" else 1
            text = json.loads(self.t[self.i:end + 1])
            self.i = end + 1
            return text
        if self.t.startswith("h'", self.i):
            end = self.t.index("'", self.i + 2)
            data = bytes.fromhex(self.t[self.i + 2:end])
            self.i = end + 1
            return data
        for word, v in (("true", True), ("false", False), ("null", None)):
            if self.t.startswith(word, self.i):
                self.i += len(word)
                return v
        start = self.i
        if self.t[self.i] == "-":
            self.i += 1
        while self.i < len(self.t) and self.t[self.i].isdigit():
            self.i += 1
        assert self.i > start, self.t[start:start + 20]
        return int(self.t[start:self.i])

    def parse(self):
        v = self.value()
        self.ws()
        assert self.i == len(self.t), self.t[self.i:]
        return v


def _hex_of_block(lines):
    """The bytes of a hex block, without spaces and `#` comments."""
    return "".join("".join(line.split("#")[0].split()) for line in lines)


def doc_examples():
    """(diagnostic, hex, [stated byte counts], [inline hex]) of each
    example of protocol.md."""
    lines = DOC.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```cbor-diag":
            i += 1
            continue
        heading = next((l for l in reversed(lines[:i]) if l.strip()), "")
        j = lines.index("```", i + 1)
        diag = "\n".join(lines[i + 1:j])
        k = j + 1
        while not lines[k].strip():
            k += 1
        assert lines[k] == "```", ("no hex block after", diag)
        m = lines.index("```", k + 1)
        hexs = _hex_of_block(lines[k + 1:m])
        counts, inline = [], []
        h = re.search(r"\((\d+) bytes\)\s*$", heading)
        if h:
            counts.append(int(h.group(1)))
        n = m + 1
        while n < len(lines) and not lines[n].strip():
            n += 1
        t = re.match(r"^(\d+) bytes: `([0-9a-f ]+)`$", lines[n]) if n < len(
            lines) else None
        if t:
            counts.append(int(t.group(1)))
            inline.append(t.group(2).replace(" ", ""))
        out.append((diag, hexs, counts, inline))
        i = m + 1
    return out


def check_docs():
    examples = doc_examples()
    assert len(examples) > 40, len(examples)
    vector_hex = {v["cbor_hex"] for v in VECTORS}
    for diag, hexs, counts, inline in examples:
        encoded = cbor2.dumps(_DiagParser(diag).parse())
        assert encoded.hex() == hexs, (diag, hexs, encoded.hex())
        for c in counts:
            assert c == len(encoded), (diag, c, len(encoded))
        for h in inline:
            assert h == hexs, (diag, h)
    # Example frames that have a vector of the same case agree with it byte
    # for byte (the vectors use the document's values).
    for name in ("response-auth", "response-auth-refresh",
                 "request-from-server", "response-to-server",
                 "response-to-server-method-not-found",
                 "response-error-too-many-requests",
                 "request-publish-durable-producer", "response-publish-durable",
                 "response-publish-duplicate",
                 "request-publish-durable-expected-offset",
                 "response-error-conflict-expected-offset",
                 "response-error-conflict-seq", "notification-event-durable",
                 "request-subscribe-durable", "response-subscribe-durable",
                 "response-subscribe-durable-pattern",
                 "request-subscribe-since-offset", "chunk-resume-events",
                 "chunk-resume-final-recovered", "chunk-resume-final-too-old",
                 "chunk-resume-final-reset", "request-subscribe-since-position",
                 "chunk-resume-final-pattern", "request-history",
                 "response-history", "request-history-latest",
                 "response-history-latest", "request-sync-push-put",
                 "response-sync-push", "response-error-conflict-sync-push",
                 "response-error-quota-exceeded", "response-error-clock-skew",
                 "request-sync-pull-live", "chunk-sync-pull",
                 "chunk-sync-pull-final-live", "chunk-sync-live"):
        v = next(v for v in VECTORS if v["name"] == name)
        assert any(h == v["cbor_hex"] for _, h, _, _ in examples), name
    return len(examples), sum(1 for _, h, _, _ in examples
                              if h in vector_hex)


KEY_ORDER = ["name", "description", "layer", "valid", "method", "params_valid",
             "max_frame_size", "error", "close", "decode_error", "result_of",
             "data_of", "diagnostic", "expect", "cbor_hex", "canonical_hex"]


def main():
    for v in VECTORS:
        check(v)
    n_examples, n_shared = check_docs()
    for old in OUT.glob("*.json"):
        old.unlink()
    for v in VECTORS:
        assert set(v) <= set(KEY_ORDER), v["name"]
        ordered = {k: v[k] for k in KEY_ORDER if k in v}
        path = OUT / (v["name"] + ".json")
        path.write_text(json.dumps(ordered, indent=2, ensure_ascii=False) +
                        "\n")
    print("wrote %d vectors to %s" % (len(VECTORS), OUT))
    print("checked %d examples of %s (%d of them are vectors too)" %
          (n_examples, DOC, n_shared))


if __name__ == "__main__":
    main()
