"""Keeps the route cache in a file, so that a restarted proxy goes on routing.

The file is a snapshot (`{"routes": [...]}`, replaced atomically) plus a journal beside it
(`<file>.journal`, one JSON line per change, appended). A change costs one appended line,
not a rewrite of every route; the journal is folded into the snapshot at start, at exit,
and whenever it outgrows the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from mitmproxy import ctx

from .route_cache import Route, dump_routes, journal_line, load_routes, replay_journal
from .router import Router

logger = logging.getLogger(__name__)
MIN_JOURNAL = 1000  # lines before the journal may be folded into the snapshot


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner can read (it holds jwts)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class RoutesFile:
    """Loads routes from `browserrouting_routes_file` at start and records every change."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.path: Path | None = None
        self.is_running = False
        self.journal: IO[str] | None = None
        self.journal_lines = 0
        router.listeners.append(self.changed)

    def take_over(self, old: RoutesFile) -> None:
        """On a reload: nothing to carry; the old part closed its journal, and this one opens
        the file again from the options when it starts."""

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_routes_file", str, "",
            "Path of a file (mode 0600, it holds jwts) that keeps the route cache across "
            "restarts: loaded at start, every change journaled beside it; empty turns it off.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "browserrouting_routes_file" not in updated:
            return
        value = ctx.options.browserrouting_routes_file
        self.detach()
        self.path = Path(value).expanduser() if value else None
        if self.is_running:
            self.attach()

    def running(self) -> None:
        # Restored once every addon is configured, so the decision log sees the routes.
        self.is_running = True
        self.attach()

    def done(self) -> None:
        self.detach()

    def attach(self) -> None:
        if self.path is not None:
            self.restore(self.path)
            self.compact()

    def detach(self) -> None:
        """Fold the journal into the snapshot: nothing is lost at exit or on a path change."""
        if self.journal is not None:
            self.compact()
            self.journal.close()
            self.journal = None

    def changed(self, change: str, route: Route, reason: str, cause: str | None) -> None:
        if self.journal is None:
            return
        try:
            self.journal.write(journal_line(change, route))
        except (OSError, ValueError) as e:
            logger.error(f"browserrouting_routes_file: cannot save a change to {self.path}: {e}")
            return
        self.journal_lines += 1
        if self.journal_lines > max(MIN_JOURNAL, len(self.router.cache)):  # amortised: O(1) a change
            self.compact()

    def restore(self, path: Path) -> None:
        """Add the file's routes (and its journal's changes) to the cache; a missing or corrupt
        file is reported, never fatal."""
        try:
            routes, unusable = load_routes(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            routes, unusable = [], 0
        except OSError as e:
            # Warnings, not errors: mitmdump exits on errors logged at startup.
            logger.warning(f"browserrouting_routes_file: ignoring {path}: {e}")
            return
        except (ValueError, RecursionError) as e:
            # Moved aside for the user to inspect, before the next save would replace it.
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(OSError):
                path.replace(aside)
            logger.warning(f"browserrouting_routes_file: ignoring {path} (moved to {aside.name}): {e}")
            routes, unusable = [], 0
        with contextlib.suppress(FileNotFoundError):
            lines = self.journal_path(path).read_text(encoding="utf-8", errors="replace").splitlines()
            routes, skipped = replay_journal(routes, lines)
            unusable += skipped
        if unusable:
            logger.warning(f"browserrouting_routes_file: skipped {unusable} unusable entries in {path}")
        for route in routes:
            self.router.add(route, "routes_file")
        if routes:
            logger.info(f"browserrouting_routes_file: {len(self.router.cache)} routes from {path}")

    def compact(self) -> None:
        """Write the cache as the snapshot, then start an empty journal (a crash in between
        replays the old journal onto the new snapshot, to the same routes)."""
        if self.path is None:
            return
        try:
            write_private(self.path, dump_routes(self.router.cache))
            if self.journal is not None:
                self.journal.close()
            fd = os.open(self.journal_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self.journal = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
            self.journal_lines = 0
        except OSError as e:
            logger.error(f"browserrouting_routes_file: cannot save {self.path}: {e}")

    @staticmethod
    def journal_path(path: Path) -> Path:
        return path.with_name(path.name + ".journal")
