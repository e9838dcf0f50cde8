"""``streamtmr cache``: what the on-disk cache of derived data holds; prune or clear it."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from streamtmr.commands import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache", help="show, prune or clear the cache of exported graphs and rendered databases",
        description="The cache ($STREAMTMR_CACHE, default ~/.cache/streamtmr) holds derived "
                    "data: exported ONNX graphs, ONNX Runtime's optimised graphs, TensorRT "
                    "plans and rendered motion-matching databases. It is bounded by "
                    "$STREAMTMR_CACHE_MAX_SIZE (default 5G, 0 for no bound): each write "
                    "removes the least recently used entries. Everything in it is rebuilt on "
                    "demand, so pruning or clearing it costs only start-up time.")
    p.add_argument("action", nargs="?", choices=("show", "prune", "clear"), default="show",
                   help="show: the folder, the bound and the entries by kind; prune: remove "
                        "the least recently used entries down to --max-size and the leftovers "
                        "of interrupted writes; clear: remove every entry [show]")
    p.add_argument("--max-size", metavar="SIZE",
                   help="prune down to this size (e.g. 2G, 500M; default: the bound)")
    p.add_argument("--list", action="store_true", help="show: every entry, least recently "
                                                       "used first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamtmr import cache

    try:
        bound = cache.max_size()
        limit = bound if args.max_size is None else cache.parse_size(args.max_size,
                                                                     "--max-size")
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.max_size is not None and args.action != "prune":
        raise UserError("--max-size is for 'streamtmr cache prune'")
    root = cache.cache_root()
    if not root.is_dir():
        print(f"cache {root}: empty (no folder)")
        return 0
    if args.action == "show":
        _show(cache, root, bound, args.list)
        return 0
    before = cache.entries(root)
    strays = cache.strays(root)
    if args.action == "clear":
        removed, failed = [], []
        for entry in before:
            try:
                if cache.remove(entry):
                    removed.append(entry)
            except OSError as e:                       # read-only, in use, ...
                failed.append(f"{entry.path}: {e.strerror or e}")
        for path in strays:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                failed.append(f"{path}: {e.strerror or e}")
        if failed:
            print(f"could not remove {len(failed)}: " + "; ".join(failed[:5]), file=sys.stderr)
    else:
        if limit <= 0:
            raise UserError("prune: no bound to prune to (give --max-size, or set "
                            f"{cache.MAX_SIZE_ENV})")
        removed = cache.trim(limit, root=root)
    freed = sum(e.size for e in removed)
    left = cache.entries(root)
    print(f"cache {root}: removed {len(removed)} entries ({cache.format_size(freed)}) and "
          f"{len(strays)} leftovers of interrupted writes; {len(left)} entries "
          f"({cache.format_size(sum(e.size for e in left))}) left")
    return 0


def _show(cache, root, bound: int, every: bool) -> None:
    found = cache.entries(root)
    total = sum(e.size for e in found)
    limit = "no bound" if bound <= 0 else f"bound {cache.format_size(bound)}"
    print(f"cache {root}: {len(found)} entries, {cache.format_size(total)} ({limit}, "
          f"${cache.MAX_SIZE_ENV})")
    count, size = Counter(e.kind for e in found), Counter()
    for e in found:
        size[e.kind] += e.size
    for kind in sorted(count):
        print(f"  {kind:<14} {count[kind]:>4} entries  {cache.format_size(size[kind]):>9}")
    strays = cache.strays(root)
    if strays:
        print(f"  {len(strays)} leftovers of interrupted writes "
              f"({cache.format_size(sum(p.stat().st_size for p in strays))}): "
              "'streamtmr cache prune' removes them")
    if every:
        now = time.time()
        for e in found:
            print(f"  {e.kind:<14} {cache.format_size(e.size):>9}  used "
                  f"{_ago(now - e.last_used):>8} ago  {e.path.name}")


def _ago(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"
