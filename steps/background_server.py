"""An aiohttp application served on 127.0.0.1 (or any address) from a thread of its own, or in the
caller's event loop: the embedded model server's way of running, in a test, a local run or a pod."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from typing import Any

from aiohttp import web


class BackgroundServer(abc.ABC):
    """Subclasses give `app()`, and may hook `_started()` / `_stopping()` (run on the server's loop)."""

    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    thread_name = "aistack-server"

    @abc.abstractmethod
    def app(self) -> web.Application:
        """The application to serve."""

    async def _started(self) -> None:
        """After the site listens: nothing by default."""
        return None

    async def _stopping(self) -> None:
        """Before the site closes its connections: nothing by default."""
        return None

    async def _start_site(self, host: str, port: int) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        bound_host, bound_port = sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        await self._started()
        return self.url

    async def _shutdown(self) -> None:
        await self._stopping()
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on a background thread with its own event loop; returns the base URL. A start that
        fails closes what it opened and raises the failure here."""
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            try:
                loop.run_until_complete(self._start_site(host, port))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._shutdown())
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join(timeout=10)
            loop.close()
            self._loop = self._runner = None
            raise failure[0]
        return self.url

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
        if not (self._thread and self._thread.is_alive()):  # a loop still running cannot be closed
            loop.close()
        self._loop = self._runner = None

    def __enter__(self) -> Any:
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve(self, host: str, port: int) -> None:
        """Serve in the current event loop until cancelled (the CLI)."""
        await self._start_site(host, port)
        try:
            await asyncio.Event().wait()
        finally:
            await self._shutdown()
