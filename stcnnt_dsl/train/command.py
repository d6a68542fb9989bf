"""`stcnnt train RECIPE [--out DIR] [--resume] [--overwrite] [--set KEY=VALUE] [--json]`
(the parser lives in cli.py; this is the command's work)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import STCNNTError
from .engine import train
from .recipe import recipe_json_schema

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.schema:
        json.dump(recipe_json_schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.recipe is None:
        raise STCNNTError("stcnnt train needs a RECIPE (a .yaml file), or --schema")
    result = train(args.recipe, out=args.out, resume=args.resume, overrides=args.set or (),
                   overwrite=args.overwrite, quiet=args.quiet or args.json)  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        json.dump({"ok": True, **result.to_dict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    best = (f"best {result.metric} {result.best:.4f} at step {result.best_step}"
            if result.best is not None else "no held-out cases")  # fmt: skip
    print(f"trained {result.steps} steps in {result.seconds:.0f} s ({best}); "
          f"{result.trainable:,} of {result.parameters:,} parameters trained")  # fmt: skip
    print(f"wrote {result.out}/last.safetensors"
          + (f", {result.out}/best.safetensors" if result.best is not None else "")
          + f", {result.out}/metrics.csv")  # fmt: skip
    return 0
