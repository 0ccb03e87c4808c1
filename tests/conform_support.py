"""Running scripts/conform in-process for the tests, and reading what it wrote."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conformance import cli
from conformance.cases import catalog

ALL_CASES = list(catalog())
INFO = ("auth_refresh_on_401_403", "vm_retries")
QUICK_WINDOW_MS = 600  # the reference re-issues at once; the SDKs need the default window
REFERENCE = str(Path(cli.__file__).resolve().parent / "drivers" / "reference.py")


@dataclass
class Run:
    status: int
    report: dict[str, Any]
    folder: Path

    def verdicts(self, client: str) -> dict[str, str]:
        return {c["case"]: c["verdict"] for c in self.client(client)["cases"]}

    def case(self, client: str, case_id: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.client(client)["cases"] if c["case"] == case_id)
        return found

    def client(self, spec: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.report["clients"] if c["client"] == spec)
        return found

    def junit(self) -> ET.Element:
        return ET.parse(self.folder / "run.xml").getroot()


def conform(
    folder: Path, *args: str, window_ms: int = QUICK_WINDOW_MS, monkeypatch: pytest.MonkeyPatch | None = None
) -> Run:
    """`scripts/conform ARGS --keep FOLDER/out --json FOLDER/run.json --junit FOLDER/run.xml`."""
    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setenv(cli.WINDOW_ENV, str(window_ms))
    outputs = [
        "--keep",
        str(folder / "out"),
        "--json",
        str(folder / "run.json"),
        "--junit",
        str(folder / "run.xml"),
    ]
    try:
        status = cli.main([*args, *outputs])
    finally:
        if monkeypatch is None:
            patch.undo()
    report = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    return Run(status, report, folder)


def flawed(*flaws: str) -> str:
    """The reference client with rules broken on purpose, as a `cmd=` client."""
    return f"cmd={sys.executable} {REFERENCE} --flaw {','.join(flaws)}"


def failing(verdicts: dict[str, str]) -> set[str]:
    return {case for case, verdict in verdicts.items() if verdict == "fail"}
