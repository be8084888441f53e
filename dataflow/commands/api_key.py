"""``profilestream api-key``: add, list or revoke the API keys of ``profilestream serve``.

    profilestream api-key add --keys-file keys.json --id crm --scope profiles:read \\
        --scope segments:read --expires 2027-06-30
    profilestream api-key revoke --keys-file keys.json --id crm
    profilestream api-key list --keys-file keys.json

``add`` prints the new key's secret once, on standard output; the file keeps only its
SHA-256 (see :mod:`dataflow.serve.auth`). A running ``serve`` picks changes up within
seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dataflow.serve.auth import ApiKey, Scope, as_utc, new_key, read_keys, write_keys


def run(args: argparse.Namespace) -> int:
    path: Path = args.keys_file
    keys = read_keys(path) if path.exists() else []
    if args.action == "list":
        for key in keys:
            state = "revoked" if key.revoked else f"expires {key.expires or 'never'}"
            print(f"{key.id}\t{','.join(sorted(key.scopes))}\t{state}")
        return 0
    if not args.id:
        print("api-key: --id is needed", file=sys.stderr)
        return 2
    if args.action == "revoke":
        if not any(k.id == args.id for k in keys):
            print(f"api-key: no key {args.id!r} in {path}", file=sys.stderr)
            return 1
        keys = [_revoked(k) if k.id == args.id else k for k in keys]
        write_keys(path, keys)
        return 0
    if any(k.id == args.id for k in keys):
        print(f"api-key: {path} already has a key {args.id!r}", file=sys.stderr)
        return 1
    if not args.scope:
        print(f"api-key: give at least one --scope ({', '.join(Scope)})", file=sys.stderr)
        return 2
    expires = as_utc(args.expires) if args.expires else None
    secret, key = new_key(args.id, frozenset(Scope(s) for s in args.scope), expires)
    write_keys(path, [*keys, key])
    print(secret)
    return 0


def _revoked(key: ApiKey) -> ApiKey:
    return ApiKey(key.id, key.sha256, key.scopes, key.expires, revoked=True)


def add_command(subparsers: Any) -> None:
    """Register ``profilestream api-key``."""
    parser = subparsers.add_parser(
        "api-key",
        help="add, list or revoke API keys of `profilestream serve`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("add", "revoke", "list"))
    parser.add_argument("--keys-file", type=Path, required=True, help="the JSON key file")
    parser.add_argument("--id", help="the key's name (who holds it)")
    parser.add_argument(
        "--scope", action="append", choices=[s.value for s in Scope], help="repeat for several"
    )
    parser.add_argument("--expires", help="RFC 3339 time or date (UTC) after which it fails")
    parser.set_defaults(handler=run)
