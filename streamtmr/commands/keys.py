"""``streamtmr keys``: make CURVE key pairs for encrypted ZeroMQ streams, or show a public key."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "keys", help="make CURVE key pairs for encrypted ZeroMQ streams",
        description="Write NAME.key (public: give it to the other side) and NAME.key_secret "
                    "(keep it: mode 0600) for each NAME into --dir. The node uses its "
                    "key_secret with --curve-secret-key; subscribers' NAME.key files go into "
                    "the --curve-allow folder; a sensor publisher's NAME.key is passed with "
                    "--curve-server-key. With --show, print the public key of existing files.")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="key pair name(s), e.g. node vr-client (with --show: key files)")
    p.add_argument("--dir", type=Path, default=Path("keys"), help="output folder [keys]")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.add_argument("--show", action="store_true",
                   help="print the Z85 public key of each given key file instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamtmr.stream.security import SecurityError, generate_keypair, load_public_key

    try:
        if args.show:
            for name in args.names:
                print(f"{name}: {load_public_key(name).decode('ascii')}")
            return 0
        for name in args.names:
            public, secret = generate_keypair(args.dir, name, force=args.force)
            key = load_public_key(public).decode("ascii")
            print(f"{name}: public {public} (share it), secret {secret} (keep it, mode 0600), "
                  f"public key {key}")
    except SecurityError as e:
        raise UserError(str(e).replace("--curve-server-key ", "")) from None
    return 0
