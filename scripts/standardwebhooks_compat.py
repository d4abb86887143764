#!/usr/bin/env python3
"""Independent check of our Standard Webhooks signatures against the reference Python
library (`pip install standardwebhooks`, https://pypi.org/project/standardwebhooks/).

Reads a JSON list of cases from standard input. Each case is an object:

    {"name": "...",            # optional, for the report
     "secret": "whsec_...",    # a whsec_ secret, or a user secret (see below)
     "id": "msg_...",          # webhook-id
     "timestamp": 1700000000,  # webhook-timestamp, unix seconds (integer)
     "body": "...",            # the exact body, as a string (UTF-8 on the wire)
     "signature": "v1,...",    # webhook-signature (verify mode only)
     "expect": "accept"}       # or "reject"; optional, default "accept" (verify mode only)

Verify mode (default): verifies each case with `standardwebhooks.webhooks.Webhook(key).verify`
and prints one line per case, `ok <name>: ...` or `FAIL <name>: ...`, then exits 1 if any case
did not end as expected. The library checks the timestamp against the current clock (5 minutes
either way), so cases must use a current timestamp.

Sign mode (`--sign`): prints the same cases as a JSON list with "signature" set by
`Webhook(key).sign`, so the Rust side can verify signatures made by Python.

Keys: a secret starting with `whsec_` is given to the library as the string (it base64-decodes
it); any other secret is given as its UTF-8 bytes, which is how agent-webhooks keys user
secrets (the library would otherwise try to base64-decode the string).

Exit codes: 0 all as expected, 1 some case not as expected, 2 bad input, 3 library missing.

Example:
    echo '[{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id": "msg_1",
            "timestamp": '"$(date +%s)"', "body": "{}"}]' \\
      | python3 scripts/standardwebhooks_compat.py --sign
"""

import argparse
import json
import sys
from datetime import datetime, timezone

try:
    from importlib.metadata import version as package_version

    from standardwebhooks.webhooks import Webhook
except ImportError as err:
    print(
        f"standardwebhooks_compat: the Python package 'standardwebhooks' is not importable "
        f"({err}); run the tests through scripts/test, which installs it into .venv-test/",
        file=sys.stderr,
    )
    sys.exit(3)


def fail_input(message):
    print(f"standardwebhooks_compat: bad input: {message}", file=sys.stderr)
    sys.exit(2)


def key_for(secret):
    """The key argument for Webhook(): whsec_ strings as they are, user secrets as bytes."""
    return secret if secret.startswith("whsec_") else secret.encode("utf-8")


def read_cases(need_signature):
    try:
        cases = json.load(sys.stdin)
    except json.JSONDecodeError as err:
        fail_input(f"standard input is not JSON: {err}")
    if not isinstance(cases, list):
        fail_input("expected a JSON list of cases")
    fields = {"secret": str, "id": str, "timestamp": int, "body": str}
    if need_signature:
        fields["signature"] = str
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            fail_input(f"case {i} is not an object")
        for field, kind in fields.items():
            value = case.get(field)
            if not isinstance(value, kind) or isinstance(value, bool):
                fail_input(f"case {i}: '{field}' must be a {kind.__name__}")
        if case.get("expect", "accept") not in ("accept", "reject"):
            fail_input(f"case {i}: 'expect' must be 'accept' or 'reject'")
        case.setdefault("name", f"case-{i}")
    return cases


def sign(cases):
    for case in cases:
        when = datetime.fromtimestamp(case["timestamp"], tz=timezone.utc)
        case["signature"] = Webhook(key_for(case["secret"])).sign(
            msg_id=case["id"], timestamp=when, data=case["body"]
        )
    json.dump(cases, sys.stdout, indent=2)
    print()
    return 0


def verify(cases):
    failed = 0
    for case in cases:
        headers = {
            "webhook-id": case["id"],
            "webhook-timestamp": str(case["timestamp"]),
            "webhook-signature": case["signature"],
        }
        expect = case.get("expect", "accept")
        try:
            Webhook(key_for(case["secret"])).verify(
                case["body"].encode("utf-8"), headers, json_parse=False
            )
            outcome, detail = "accept", "accepted"
        except Exception as err:  # the library raises several types for bad input
            outcome, detail = "reject", f"rejected ({type(err).__name__}: {err})"
        if outcome == expect:
            print(f"ok {case['name']}: {detail}, as expected")
        else:
            failed += 1
            print(f"FAIL {case['name']}: {detail}, expected {expect}")
    print(
        f"standardwebhooks {package_version('standardwebhooks')}: "
        f"{len(cases) - failed} passed, {failed} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(
        description="Check Standard Webhooks signatures against the standardwebhooks package."
    )
    parser.add_argument(
        "--sign",
        action="store_true",
        help="sign the cases with the Python library instead of verifying them",
    )
    args = parser.parse_args()
    cases = read_cases(need_signature=not args.sign)
    return sign(cases) if args.sign else verify(cases)


if __name__ == "__main__":
    sys.exit(main())
