"""``lmmiqa methods``: list the registered scoring methods, one line each."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("methods", help="list scoring methods", description="List the registered scoring methods.")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import lmmiqa

    methods = lmmiqa.list_methods()
    if args.format == "json":
        print(json.dumps(methods, indent=2))
    else:
        width = max(len(n) for n in methods)
        for name, summary in methods.items():
            print(f"{name:<{width}}  {summary}")
    return 0
