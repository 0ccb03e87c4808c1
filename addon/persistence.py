"""Keeps the route cache in a file, so that a restarted proxy goes on routing."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mitmproxy import ctx

from .router import BrowserRouting
from .routes import dump_routes, load_routes

logger = logging.getLogger(__name__)


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
    """Loads routes from `browserrouting_routes_file` at start and saves every change."""

    def __init__(self, router: BrowserRouting) -> None:
        self.router = router
        self.path: Path | None = None
        self.is_running = False

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_routes_file", str, "",
            "Path of a file (mode 0600, it holds jwts) that keeps the route cache across "
            "restarts: loaded at start, rewritten on every change; empty turns it off.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "browserrouting_routes_file" not in updated:
            return
        value = ctx.options.browserrouting_routes_file
        self.path = Path(value).expanduser() if value else None
        if self.is_running:
            self.attach()

    def running(self) -> None:
        # Restored once every addon is configured, so the decision log sees the routes.
        self.is_running = True
        self.attach()

    def attach(self) -> None:
        self.router.cache.on_change = None
        if self.path is not None:
            self.restore(self.path)
            self.router.cache.on_change = self.save

    def restore(self, path: Path) -> None:
        """Add the file's routes to the cache; a missing or corrupt file is reported, never fatal."""
        try:
            routes, unusable = load_routes(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
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
            return
        if unusable:
            logger.warning(f"browserrouting_routes_file: skipped {unusable} unusable entries in {path}")
        for route in routes:
            self.router.add(route, "routes_file")
        logger.info(f"browserrouting_routes_file: {len(self.router.cache)} routes from {path}")

    def save(self) -> None:
        if self.path is None:
            return
        try:
            write_private(self.path, dump_routes(self.router.cache))
        except OSError as e:
            logger.error(f"browserrouting_routes_file: cannot save {self.path}: {e}")
