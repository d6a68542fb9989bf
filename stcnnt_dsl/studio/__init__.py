"""The studio: a local web page to design architectures (`stcnnt studio`).

`analysis` computes what the page shows (no web dependencies); `server` is the FastAPI
app and the command's handler (needs the `studio` extra: FastAPI and uvicorn); `static/`
holds the page itself (plain HTML, CSS and JavaScript, served from the package).
"""

from typing import Any

from .._lazy import load


def __getattr__(name: str) -> Any:
    return load(__name__, name, globals())  # create_app needs FastAPI (the studio extra)
