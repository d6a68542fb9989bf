"""The process one studio training runs in: `python -m stcnnt_dsl.studio.worker RUN_DIR`.

It calls the trainer (`stcnnt_dsl.train(RUN_DIR/studio-recipe.yaml, out=RUN_DIR)`) and, however
that ends, writes `RUN_DIR/exit.json`: finished, failed (with the error's message: the
page shows it beside the last good checkpoint) or stopped (SIGTERM from the page's stop
button). It runs in its own session, so closing the page or stopping the studio leaves it
running.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

STOPPED = "stopped from the page; resume continues from the last checkpoint"  # as runs.py


class Stopped(BaseException):
    """SIGTERM arrived: the page asked the run to stop."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def _finish(run_dir: Path, attempt: int, state: str, message: str | None) -> None:
    document = {
        "state": state,
        "message": message,
        "attempt": attempt,
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    temp = run_dir / "exit.tmp"
    temp.write_text(json.dumps(document, indent=1), encoding="utf-8")
    os.replace(temp, run_dir / "exit.json")


def _user_error(err: BaseException) -> BaseException | None:
    """The `STCNNTError` an exception was raised from, if any (its message is the one to
    show)."""
    from stcnnt_dsl.errors import STCNNTError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, STCNNTError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stcnnt_dsl.studio.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    signal.signal(signal.SIGTERM, _stop)
    print(
        f"studio worker: {'resuming' if args.resume else 'starting'} {run_dir.name} "
        f"(process {os.getpid()})",
        flush=True,
    )
    try:
        import torch

        from stcnnt_dsl.errors import STCNNTError

        # leave a core to the studio's server (the page stays responsive while it trains)
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

        try:
            from stcnnt_dsl.train import train
        except ImportError as err:
            raise STCNNTError(
                f'training needs the train extra ({err}): pip install "stcnnt-dsl[train]"'
            ) from None
        train(str(run_dir / "studio-recipe.yaml"), out=str(run_dir), resume=args.resume)
    except Stopped:
        _finish(
            run_dir,
            args.attempt,
            "stopped",
            "stopped from the page; resume continues from the last checkpoint",
        )
        return 0
    except STCNNTError as err:
        print(f"error: {err}", flush=True)
        _finish(run_dir, args.attempt, "failed", str(err))
        return 2
    except BaseException as err:
        traceback.print_exc()
        user = _user_error(err)
        if user is not None:  # a user's mistake that a library (MONAI's caching) wrapped
            _finish(run_dir, args.attempt, "failed", str(user))
            return 2
        _finish(
            run_dir,
            args.attempt,
            "failed",
            f"internal error (a bug in stcnnt-dsl): {type(err).__name__}: {err}; "
            "train.log in the run's folder has the traceback",
        )
        return 1
    _finish(run_dir, args.attempt, "finished", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
