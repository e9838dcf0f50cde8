"""The ``streamtmr`` command: parses arguments and hands over to ``streamtmr.commands.*``.

Each module in :mod:`streamtmr.commands` defines ``register(subparsers)``, which adds its
sub-command and sets ``func`` on the parser; the function receives the parsed arguments and
returns an exit status. Errors meant for the user are raised as :class:`UserError`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from streamtmr import __version__, commands
from streamtmr.commands import UserError

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamtmr", description="Real-time skeleton-stream anonymizer.")
    parser.add_argument("--version", action="version", version=f"streamtmr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"streamtmr.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"streamtmr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:                            # `streamtmr ... | head`: reader left
        devnull = os.open(os.devnull, os.O_WRONLY)     # (no second error when Python flushes
        os.dup2(devnull, sys.stdout.fileno())          # stdout at exit)
        return 141                                     # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
