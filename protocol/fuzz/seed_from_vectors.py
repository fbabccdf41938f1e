#!/usr/bin/env python3
"""Write seed inputs for the `decode` fuzz target from the golden vectors.

Each named vector in conformance/vectors/<name>.json becomes the raw frame
bytes (its `cbor_hex`) in protocol/fuzz/corpus/decode/<name>. Run from
anywhere; standard library only. Re-running rewrites the same files.

The selection covers each DecodeError variant the target can reach with
small inputs (invalid frames) and all four frame kinds, the request methods
and the odd but legal encodings (valid frames), while keeping the seed corpus
tiny (about 1.5 KB). TooLarge needs a frame over the target's 64 KiB limit,
so no seed exercises it. empty-input is left out because libFuzzer skips
empty files (it always runs the empty input itself), and chunk-64kib because
libFuzzer's default -max_len is 4096 and a 64 KiB seed would only slow every
mutation down.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = HERE.parent.parent / "conformance" / "vectors"
OUT = HERE / "corpus" / "decode"

NAMES = [
    # invalid frames: Truncated, Malformed, IndefiniteLength, InvalidUtf8,
    # TrailingBytes, TooDeep, InvalidEnvelope, UnknownKind
    "truncated-uint-argument", "truncated-huge-array-count",
    "truncated-chunk-data", "break-top-level", "break-as-params",
    "reserved-ai-31-tag", "simple-two-byte-below-32", "indefinite-array-frame",
    "indefinite-map-params", "invalid-utf8-method", "invalid-utf8-surrogate",
    "trailing-second-frame", "depth-33", "depth-33-tags", "envelope-map",
    "envelope-tagged", "too-few-notification", "id-bignum", "id-float",
    "seq-negative", "response-id-negative", "error-key-beyond-i64",
    "kind-99", "kind-max",
    # TooLarge only under the vector's 64-byte limit, not the target's 64 KiB
    "too-large",
    # valid frames: every kind, the methods, odd but legal encodings
    "request-ping", "request-ping-tags-floats", "request-ping-any-params",
    "request-id-max", "request-trailing-element", "request-auth",
    "request-subscribe-pattern", "request-unsubscribe", "request-publish",
    "request-publish-bytes-no-echo", "request-presence-get",
    "request-presence-set", "request-unknown-method",
    "params-subscribe-key-beyond-i64", "response-id-max", "response-auth",
    "response-presence-get", "response-error-payload-too-large",
    "response-error-unknown-keys", "notification-event-no-from",
    "notification-presence-join", "notification-closing-rate-limited",
    "notification-unknown", "chunk-map-data", "chunk-seq-max", "chunk-final",
    "depth-32", "nonshortest-id-8byte", "nonshortest-inside-params",
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for name in NAMES:
        vector = json.loads((VECTORS / f"{name}.json").read_text())
        assert vector["name"] == name
        data = bytes.fromhex(vector["cbor_hex"])
        (OUT / name).write_bytes(data)
        total += len(data)
    print(f"wrote {len(NAMES)} seeds, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
