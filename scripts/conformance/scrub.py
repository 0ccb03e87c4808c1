"""Secrets out of what the runner writes: the API key and every browser jwt.

mitmproxy's HAR and curl exports hold the requests as sent: the `Authorization` header (the API
key), `jwt` query parameters, and browser objects whose `cdp_ws_url` carries the jwt. The API key
is known and replaced wherever it shows; a jwt is recognised by where it stands (a `jwt` query
parameter, a JSON `jwt` field). A body the HAR holds base64-encoded (binary) is not searched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

REDACTED = "REDACTED"
JWT_PARAM = re.compile(r"((?:^|[?&\s'\"])jwt=)[^&\s'\"#\\]+")
JWT_FIELD = re.compile(r'("jwt"\s*:\s*")[^"]*(")')
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class Scrubber:
    def __init__(self, api_key: str) -> None:
        self.secrets = sorted({api_key, quote(api_key, safe="")} - {""}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = JWT_PARAM.sub(rf"\g<1>{REDACTED}", text)
        return JWT_FIELD.sub(rf"\g<1>{REDACTED}\g<2>", text)

    def value(self, value: Any) -> Any:
        """Every string of a JSON value scrubbed; secret headers and `jwt` parameters emptied."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            name = str(value.get("name", "")).lower()
            if "value" in value and (name in SECRET_HEADERS or name == "jwt"):
                return {**{k: self.value(v) for k, v in value.items()}, "value": REDACTED}
            return {k: self.value(v) for k, v in value.items()}
        return value

    def har(self, path: Path) -> None:
        har = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(self.value(har), indent=1), encoding="utf-8")

    def curl(self, path: Path) -> None:
        """The curl line with its secrets as shell variables, so that it runs as it is once they
        are set (the export quotes each argument in single quotes)."""
        text = path.read_text(encoding="utf-8")
        for secret in self.secrets:
            text = text.replace(secret, "'\"$KERNEL_API_KEY\"'")
        text = JWT_PARAM.sub("\\g<1>'\"$KERNEL_BROWSER_JWT\"'", text)
        path.write_text(text, encoding="utf-8")
