"""Hot reload: a new dialplan on SIGHUP or when the config file changes.

Rules:

* Rule 1: a valid new file replaces :attr:`DialplanWatcher.current`; calls already running
  keep the objects they were given (everything is frozen), so only new calls see it.
* Rule 2: an invalid file is logged as its one-line error and the old dialplan is kept; the
  next change (or SIGHUP) tries again.
* Rule 3: ``server:`` settings are not applied live; a change to them is logged as needing a
  restart (the dialplan part still applies).
* Rule 4: the file is polled (mtime, size, inode) every ``poll_interval_s``; an editor that
  replaces the file by renaming is seen too.
* Rule 5: while serving (:meth:`DialplanWatcher.run`, SIGHUP) the file is read and checked on a
  worker thread and only the result is applied on the loop: loading took 20 ms and more, a gap
  in every call's audio (found by the fault suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from sipbot.config import Config, load_config
from sipbot.dialplan.model import Dialplan
from sipbot.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 1.0
FileSignature = tuple[int, int, int] | None


class DialplanWatcher:
    """Keeps the current dialplan of a running server fresh.

    Args:
        config: the config the server started with (its ``path`` is watched; None → nothing
            to watch, SIGHUP only re-reads the embedded default).
        poll_interval_s: how often the file's mtime is checked.
        on_reload: called with each new valid config (after it became current).
    """

    def __init__(
        self,
        config: Config,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        on_reload: Callable[[Config], None] | None = None,
    ) -> None:
        self._config = config
        self._poll_interval_s = poll_interval_s
        self._on_reload = on_reload
        self._signature = _signature(config.path)
        self._tasks: set[asyncio.Task[bool]] = set()  # SIGHUP reloads under way

    @property
    def current(self) -> Dialplan:
        """The dialplan new calls are routed with."""
        return self._config.dialplan

    @property
    def config(self) -> Config:
        """The config the current dialplan came from."""
        return self._config

    def reload(self) -> bool:
        """Load the file now. Returns True if a new dialplan became current (Rules 1-3)."""
        path = self._config.path
        if path is None:
            log.info("%s: no file to reload", self._config.source)
            return False
        self._signature = _signature(path)
        return self._apply(_load(path))

    async def reload_off_loop(self) -> bool:
        """:meth:`reload`, with the file read and checked on a worker thread (Rule 5)."""
        path = self._config.path
        if path is None:
            log.info("%s: no file to reload", self._config.source)
            return False
        self._signature = _signature(path)
        return self._apply(await asyncio.to_thread(_load, path))

    def _apply(self, new: Config | None) -> bool:
        if new is None:
            return False
        for warning in new.warnings:
            log.warning("%s", warning)
        if new.server != self._config.server:
            log.warning("%s: server settings changed: restart sipbot to apply them", new.source)
        self._config = new
        log.info("%s: dialplan reloaded (%d routes)", new.source, len(new.dialplan.routes))
        if self._on_reload is not None:
            self._on_reload(new)
        return True

    async def poll_off_loop(self) -> bool:
        """Reload (off the loop) if the file changed since the last look."""
        if self._config.path is None or _signature(self._config.path) == self._signature:
            return False
        return await self.reload_off_loop()

    def poll(self) -> bool:
        """Reload if the file changed since the last look. Returns True if it reloaded."""
        if self._config.path is None or _signature(self._config.path) == self._signature:
            return False
        return self.reload()

    async def run(self) -> None:
        """Watch until cancelled: SIGHUP (where the loop supports it) and file polling."""
        loop = asyncio.get_running_loop()
        sighup = getattr(signal, "SIGHUP", None)
        installed = False
        if sighup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sighup, self._on_sighup)
                installed = True
        try:
            while True:
                await asyncio.sleep(self._poll_interval_s)
                await self.poll_off_loop()
        finally:
            if installed and sighup is not None:
                loop.remove_signal_handler(sighup)
            for task in list(self._tasks):
                task.cancel()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self._config.source)
        task = asyncio.get_running_loop().create_task(self.reload_off_loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _load(path: str) -> Config | None:
    """The config in ``path``, or None after logging why it is not valid (Rule 2)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        log.error("%s (keeping the previous dialplan)", exc)
        return None


def _signature(path: str | None) -> FileSignature:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
