#!/usr/bin/env python3
"""Independent check of our Ed25519 (`v1a`) webhook signatures and `whsk_`/`whpk_` keys with
the `cryptography` package (PyPI; OpenSSL's Ed25519), which shares no code with the Rust
side (ed25519-dalek).

Reads a JSON list of cases from standard input. Each case is an object:

    {"name": "...",            # optional, for the report
     "public_key": "whpk_...", # verify mode: the key to verify with
     "secret_key": "whsk_...", # sign mode: the key to sign with
     "id": "msg_...",          # webhook-id
     "timestamp": 1700000000,  # webhook-timestamp, unix seconds (integer)
     "body": "...",            # the exact body, as a string (UTF-8 on the wire)
     "signature": "v1,... v1a,...",  # webhook-signature (verify mode only)
     "expect": "accept"}       # or "reject"; optional, default "accept" (verify mode only)

Verify mode (default): a case is accepted when any `v1a,<base64>` entry of the signature is a
valid Ed25519 signature of `{id}.{timestamp}.{body}` under the public key (other entries are
skipped, as the Standard Webhooks specification asks). Prints `ok <name>` or `FAIL <name>: ...`
per case and exits 1 if any case did not end as expected. No timestamp tolerance is applied:
the Rust side checks freshness; this script checks the cryptography.

Sign mode (`--sign`): prints the cases as a JSON list with "signature" (`v1a,<base64>`) and
"public_key" (the `whpk_` key the library derives from the `whsk_` seed) set.

Exit codes: 0 all as expected, 1 some case not as expected, 2 bad input, 3 library missing.
"""

import argparse
import base64
import binascii
import json
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError as err:
    print(
        f"ed25519_compat: the Python package 'cryptography' is not importable ({err}); "
        "run the tests through scripts/test, which installs it into .venv-test/",
        file=sys.stderr,
    )
    sys.exit(3)


def fail_input(message):
    print(f"ed25519_compat: bad input: {message}", file=sys.stderr)
    sys.exit(2)


def key_bytes(text, prefix):
    if not isinstance(text, str) or not text.startswith(prefix):
        fail_input(f"expected a key starting with {prefix}")
    try:
        return base64.b64decode(text[len(prefix):], validate=True)
    except binascii.Error:
        fail_input(f"{prefix} key is not base64")


def content(case):
    return f"{case['id']}.{case['timestamp']}.".encode() + case["body"].encode("utf-8")


def verify(case):
    public = Ed25519PublicKey.from_public_bytes(key_bytes(case["public_key"], "whpk_"))
    for entry in case["signature"].split():
        version, _, value = entry.partition(",")
        if version != "v1a":
            continue
        try:
            public.verify(base64.b64decode(value), content(case))
            return True
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sign", action="store_true")
    args = parser.parse_args()
    try:
        cases = json.load(sys.stdin)
    except json.JSONDecodeError as err:
        fail_input(str(err))
    if not isinstance(cases, list):
        fail_input("expected a JSON list of cases")

    if args.sign:
        out = []
        for case in cases:
            seed = key_bytes(case["secret_key"], "whsk_")
            if len(seed) != 32:
                fail_input("whsk_ must hold a 32-byte seed")
            private = Ed25519PrivateKey.from_private_bytes(seed)
            raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            signature = base64.b64encode(private.sign(content(case))).decode()
            out.append(
                dict(case, signature=f"v1a,{signature}",
                     public_key="whpk_" + base64.b64encode(raw).decode())
            )
        json.dump(out, sys.stdout)
        return 0

    failed = 0
    for i, case in enumerate(cases):
        name = case.get("name", str(i))
        expect = case.get("expect", "accept")
        got = "accept" if verify(case) else "reject"
        if got == expect:
            print(f"ok {name}: {got}")
        else:
            failed += 1
            print(f"FAIL {name}: expected {expect}, got {got}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
