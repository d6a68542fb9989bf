"""The two folders the studio may touch: `--data` (read only) and `--runs` (read and
write). No path that comes from a request is opened anywhere else.

Requests never carry file paths: they name a case by its index and a run by a short name
(letters, digits, `-`, `_`, `.`). Everything is still resolved through `Folder.inside`,
which follows symbolic links and refuses whatever lands outside the folder, so a data
set's own list (a `dataset.json` naming `../../secret.nii.gz`) or a link inside the
folder that points out is refused too.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import STCNNTError

__all__ = ["RUN_NAME", "Folder", "OutsideFolderError", "run_name"]

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class OutsideFolderError(STCNNTError):
    """A path that leaves the folder the studio was given."""


class Folder:
    """A folder given on the command line; `inside(...)` is the only way to a file in it."""

    def __init__(self, root: str | Path, *, what: str) -> None:
        self.given = Path(root)
        self.root = self.given.resolve()
        self.what = what  # "--data" or "--runs", for messages

    def inside(self, *parts: str | Path) -> Path:
        """`root/parts...` with links followed; refused when it leaves the folder
        (`..`, an absolute part, a link that points out)."""
        path = self.root.joinpath(*parts)
        for part in parts:
            text = str(part)
            if "\x00" in text:
                raise OutsideFolderError(f"a path with a NUL byte is not allowed: {text!r}")
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            shown = "/".join(str(p) for p in parts)
            raise OutsideFolderError(
                f"{shown!r} is outside the folder given with {self.what} ({self.given}); the "
                "studio opens nothing else (a `..`, an absolute path or a link that points out)"
            )
        return resolved

    def contains(self, path: str | Path) -> bool:
        try:
            self.inside(path)
        except OutsideFolderError:
            return False
        return True


def run_name(name: str) -> str:
    """`name` when it is a valid run name (it becomes one folder under --runs)."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise STCNNTError(
            f"a run name is 1-64 letters, digits, '-', '_' or '.', starting with a letter or "
            f"digit; got {name!r}"
        )
    return name
