"""The `stcnnt studio` command: serve the studio's page on this computer.

Binds the socket itself (a taken port or a bad address is a clear message, and port 0
picks a free port whose address is printed), serves `studio.app` with uvicorn, opens a
browser when there is a desktop to open it on, and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import stcnnt_dsl.studio as studio

from ..errors import STCNNTError
from ..language.spec import bundled_text, list_architectures
from . import analysis

__all__ = ["DEFAULT_PORT", "run_studio"]

DEFAULT_PORT = 8765
MAX_FILE_BYTES = 1 << 20
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
INSTALL_HINT = 'pip install "stcnnt-dsl[studio]"'


# --------------------------------------------------------------------------- helpers


def _read_initial(arch: str | None) -> dict[str, Any] | None:
    """The page's starting text from the command line's ARCH: a bundled name, a file
    (read here, once; the browser never names files), or an expression or YAML text."""
    if arch is None:
        return None
    name = arch.strip()
    if name in list_architectures():
        return {"name": name, "text": bundled_text(name)}
    path = Path(arch)
    if "\n" not in arch and (arch.endswith((".yaml", ".yml", ".json")) or _is_file(path)):
        if not _is_file(path):
            raise STCNNTError(f"file not found: {arch}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise STCNNTError(f"{arch} is larger than 1 MiB; an architecture is a few lines")
        return {"name": path.name, "text": path.read_text(encoding="utf-8", errors="replace")}
    return {"name": "command line", "text": arch}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a clear `STCNNTError` (port taken, no such address)."""
    if not 0 <= port <= 65535:
        raise STCNNTError(f"--port must be 0..65535 (0 picks a free port), got {port}")
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as err:
        raise STCNNTError(f"cannot listen on --host {host!r}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # a restarted studio may reuse its port at once; never shared
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise STCNNTError(
                f"port {port} on {host} is already in use (another studio or server?); pass "
                "--port N with a free port, or --port 0 to let the system pick one"
            ) from None
        if err.errno == errno.EACCES:
            raise STCNNTError(
                f"no permission to listen on port {port} (ports below 1024 need privileges); "
                "pass --port N with N >= 1024, or --port 0"
            ) from None
        raise STCNNTError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def _url(host: str, port: int) -> str:
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _can_open_browser() -> bool:
    """Whether a graphical browser can open: on Linux and BSD only inside a desktop
    session (elsewhere `webbrowser` would run a text browser in this terminal) or with
    $BROWSER set."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _warm(initial: dict[str, Any] | None) -> None:
    """Run one analysis early (imports, first plans) so the page's first answer is fast."""
    try:
        analysis.analyze(initial["text"] if initial else "unet", "")
    except Exception:  # a warm-up only: the page reports real errors
        pass


# --------------------------------------------------------------------------- the command


def run_studio(args: argparse.Namespace) -> int:
    """`stcnnt studio [ARCH] [--host H] [--port N] [--no-browser]`; returns the exit
    status (0 after Ctrl-C)."""
    try:
        import uvicorn

        create_app = studio.create_app
    except ImportError as err:
        raise STCNNTError(
            f"the studio needs FastAPI and uvicorn ({err}); install them with {INSTALL_HINT}"
        ) from None
    initial = _read_initial(args.arch)
    host = args.host
    specific = host.strip("[]") not in ("0.0.0.0", "::", "")
    if not _is_loopback(host):
        names = ", ".join(LOOPBACK_HOSTS) + (f" and {host}" if specific else "")
        print(
            f"stcnnt studio: warning: listening on {host}, not only on this computer: whoever "
            f"reaches this port can use the studio (it answers to the Host names {names})",
            file=sys.stderr,
        )
    sock = _bind(host, args.port)
    port = sock.getsockname()[1]
    data, runs = getattr(args, "data", None), getattr(args, "runs", None)
    if data is not None and runs is None:
        runs = "stcnnt-runs"
    app = create_app(initial=initial, allowed_hosts=[host] if specific else [], data=data,
                     runs=runs)  # fmt: skip
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    url = _url(host, port)

    stopped = threading.Event()

    def when_ready() -> None:
        while not server.started:
            if stopped.is_set():
                return
            time.sleep(0.01)
        free = " (a free port)" if args.port == 0 else ""
        print(f"stcnnt studio: serving {url}{free}; press Ctrl-C to stop", flush=True)
        if not args.no_browser:
            if _can_open_browser():
                import webbrowser

                webbrowser.open(url)
            else:
                print("stcnnt studio: no desktop session to open a browser in: open the "
                      "address above in yours (through an SSH tunnel on a remote machine)",
                      flush=True)  # fmt: skip
        _warm(initial)

    ready = threading.Thread(target=when_ready, name="stcnnt-studio-ready", daemon=True)
    ready.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has stopped
        pass
    finally:
        stopped.set()
        sock.close()
    print("stcnnt studio: stopped", file=sys.stderr)
    _wait_for([ready, *app.state.runner.threads.copy()])
    return 0


def _wait_for(threads: list[threading.Thread], seconds: float = 5.0) -> None:
    """Let this studio's analyses finish before the interpreter shuts down (a thread
    still inside torch at exit aborts the process). One still running after the wait
    (an analysis past its time limit) is left behind by ending the process at once."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
