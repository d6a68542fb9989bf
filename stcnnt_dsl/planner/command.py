"""`stcnnt plan DATASET --memory SIZE [--device] [--base] [--batch] [--search N]
[--proxy STEPS] [--out DIR] [--json]` (the parser lives in cli.py; this is the work)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import STCNNTError
from .plan import plan

__all__ = ["run"]


def _dataset(text: str) -> Any:
    """A fingerprint from a .json file (`stcnnt data inspect --json`), else the folder."""
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise STCNNTError(f"fingerprint file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise STCNNTError(f"{path}: not a JSON fingerprint ({err})") from None
        data = data.get("fingerprint", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise STCNNTError(f"{path}: a fingerprint is a JSON object (stcnnt data inspect "
                              "--json)")  # fmt: skip
        return data
    if not path.is_dir():
        raise STCNNTError(f"data set not found: {path} (give a folder or a fingerprint .json)")
    return str(path)


def run(args: argparse.Namespace) -> int:
    result = plan(_dataset(args.dataset), memory=args.memory, device=args.device,
                  batch=args.batch, base=args.base)  # fmt: skip
    front = None
    if args.proxy and not args.search:
        raise STCNNTError("--proxy STEPS trains the candidates of --search N; add --search")
    if args.search:
        from .search import search

        front = search(
            _dataset(args.dataset), memory=args.memory, device=args.device,
            trials=args.search, proxy_steps=args.proxy, seed=args.seed,
            quiet=args.quiet or args.json or not sys.stderr.isatty(),
        )  # fmt: skip
    written = result.write(args.out) if args.out else []
    if front is not None and args.out:
        written += front.write(args.out)
    if args.json:
        doc = {"ok": True, **result.to_dict()}
        if front is not None:
            doc["search"] = front.to_dict()
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(result)
    if front is not None:
        print()
        print(front.table())
    for path in written:
        print(f"wrote {path}")
    return 0
