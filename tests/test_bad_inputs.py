"""A corpus of bad inputs, each through one real mitmweb with the addon.

Control-plane answers (malformed JSON, odd types, codings, strings that cannot be encoded,
content types), client requests (odd paths and headers) and options set live through
mitmweb's command API. For every case: no hook raises ("Addon error", Traceback), the client
gets byte for byte what the upstream sent, the upstream gets byte for byte what the client
sent where no rule applies, and nothing is learned from junk (`browserrouting.routes`).
What may be learned (a BOM, identity, a jwt with odd characters) reaches the VM percent-encoded.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import brotli
import pytest
from conftest import proxy_options
from hardening_support import (
    AUTH,
    RawAnswer,
    Reply,
    ScriptedServer,
    Seen,
    crashes,
    raw_request,
    request_headers,
)
from mitmdump_runner import CommandFailed, Mitmdump
from proxy_clients import vm_hits, web_api
from simulator import Simulator

try:  # as the addon does (Python 3.14+ has it in the standard library)
    from compression import zstd
except ImportError:
    from backports import zstd

Body = Callable[[str, str, str], bytes]  # (session id, base_url, jwt) -> the CP's body
JSON = ("Content-Type", "application/json")
CORPUS_SID = "corpus-route"
J = (JSON,)


def doc(**fields: Any) -> Body:
    """A browser object with `fields` replacing (or, as None, removing) its own."""

    def body(sid: str, base: str, jwt: str) -> bytes:
        obj = {"session_id": sid, "base_url": base, "jwt": jwt, "headless": True, **fields}
        return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()

    return body


def text(template: str) -> Body:
    """A body given as text, with {sid}, {base} and {jwt} filled in (JSON escapes kept as written)."""
    return lambda sid, base, jwt: (
        template.replace("{sid}", sid).replace("{base}", base).replace("{jwt}", jwt).encode()
    )


def coded(body: Body, encode: Callable[[bytes], bytes]) -> Body:
    return lambda sid, base, jwt: encode(body(sid, base, jwt))


VALID = doc()
OBJ = '"session_id": "{sid}", "base_url": "{base}", "jwt": "{jwt}"'


def cut(size: int) -> Body:
    return lambda sid, base, jwt: VALID(sid, base, jwt)[:size]


def swap(old: bytes, new: bytes) -> Body:
    return lambda sid, base, jwt: VALID(sid, base, jwt).replace(old, new, 1)


def coding(name: str) -> tuple[tuple[str, str], ...]:
    return (JSON, ("Content-Encoding", name))


def ctype(value: str) -> tuple[tuple[str, str], ...]:
    return (("Content-Type", value),)


# (case, body, the answer's headers, what is learned: None for nothing, else its jwt ("live": a served one))
ANSWERS: list[tuple[str, Body, tuple[tuple[str, str], ...], str | None]] = [
    ("truncated", cut(-1), J, None),
    ("truncated_in_a_string", cut(40), J, None),
    ("deep_lists", text("[" * 100_000 + "{" + OBJ + "}" + "]" * 100_000), J, None),
    ("deep_objects", text('{"a":' * 50_000 + "{" + OBJ + "}" + "}" * 50_000), J, None),
    ("huge_integer", text("{" + OBJ + ', "n": ' + "9" * 5000 + "}"), J, None),
    ("huge_float_id", text('{"session_id": 1e999999, "base_url": "{base}", "jwt": "{jwt}"}'), J, None),
    ("id_a_number", doc(session_id=12345), J, None),
    ("base_url_a_list", doc(base_url=["https://127.0.0.2/x"]), J, None),
    ("jwt_an_object", doc(jwt={"token": "x"}), J, None),
    ("null_fields", text('{"session_id": null, "base_url": null, "jwt": null}'), J, None),
    ("blank_id", doc(session_id="   "), J, None),
    ("nan_id", text('{"session_id": NaN, "base_url": "{base}", "jwt": "{jwt}"}'), J, None),
    ("infinite_jwt", text('{"session_id": "{sid}", "base_url": "{base}", "jwt": -Infinity}'), J, None),
    ("duplicate_keys", text("{" + OBJ + ', "jwt": null}'), J, None),
    ("non_utf8", swap(b'"headless"', b'"\xff\xfe"'), J, None),
    ("latin1", swap(b"true", b'"caf\xe9"'), J, None),
    ("raw_nul_in_a_string", swap(b'"headless"', b'"head\x00less"'), J, None),
    ("empty", lambda s, b, j: b"", J, None),
    ("a_string", text('"{sid} {base} {jwt}"'), J, None),
    ("bom", lambda s, b, j: b"\xef\xbb\xbf" + VALID(s, b, j), J, "live"),  # as httpx's .json() reads it
    # codings
    ("unknown_coding", VALID, coding("x-custom"), None),
    ("stacked", coded(VALID, lambda x: brotli.compress(gzip.compress(x))), coding("gzip, br"), "live"),
    ("stacked_unknown", coded(VALID, gzip.compress), coding("gzip, rot13"), None),
    ("truncated_gzip", coded(VALID, lambda x: gzip.compress(x)[:30]), coding("gzip"), None),
    ("truncated_br", coded(VALID, lambda x: brotli.compress(x)[:30]), coding("br"), None),
    ("truncated_zstd", coded(VALID, lambda x: zstd.compress(x)[:30]), coding("zstd"), None),
    ("gzip_not_gzip", VALID, coding("gzip"), None),
    ("identity", VALID, coding("identity"), "live"),
    ("raw_deflate", coded(VALID, lambda x: zlib.compress(x)[2:-4]), coding("deflate"), "live"),
    ("zstd", coded(VALID, zstd.compress), coding("zstd"), "live"),
    ("upper_case_coding", coded(VALID, gzip.compress), coding("GZIP"), "live"),
    # strings
    ("surrogate_id", text('{"session_id": "{sid}\\ud800", "base_url": "{base}", "jwt": "{jwt}"}'), J, None),
    (
        "surrogate_base_url",
        text('{"session_id": "{sid}", "base_url": "{base}\\udfff", "jwt": "{jwt}"}'),
        J,
        None,
    ),
    ("surrogate_name", text("{" + OBJ + ', "name": "n\\ud800"}'), J, None),
    ("nul_in_base_url", lambda s, b, j: doc(base_url=b + "\x00/x")(s, b, j), J, None),
    ("crlf_in_base_url", lambda s, b, j: doc(base_url=b + "\r\nX-Injected: 1")(s, b, j), J, None),
    ("crlf_in_jwt", doc(jwt="tok\r\nX-Injected: 1"), J, "tok\r\nX-Injected: 1"),
    ("nul_in_jwt", doc(jwt="tok\x00after"), J, "tok\x00after"),
    ("jwt_of_10kb", doc(jwt="j" * 10_240), J, "j" * 10_240),
    ("id_of_10kb", lambda s, b, j: doc(session_id=s + "-" + "i" * 10_240)(s, b, j), J, "live"),
    ("jwt_with_spaces", lambda s, b, j: doc(jwt=f"  {j}\t")(s, b, j), J, "live"),
    # content types
    ("text_json", VALID, ctype("text/json"), None),
    ("jsonp", VALID, ctype("application/jsonp"), None),
    ("no_content_type", VALID, (), None),
    ("two_types", VALID, ctype("application/json, text/html"), None),
    ("problem_json", VALID, ctype("application/problem+json; charset=utf-8"), "live"),
    ("upper_case_type", VALID, ctype("APPLICATION/JSON"), "live"),
]


@pytest.fixture(scope="module")
def web(sim: Simulator, cp: ScriptedServer) -> Iterator[Mitmdump]:
    options = proxy_options(sim, browserrouting_control_plane=f"{sim.cp_url},{cp.url}")
    with Mitmdump(options, tool="mitmweb") as mitmweb:
        jwt = sim.jwt_for(sim.create_browser()["session_id"])
        cp.on(f"/browsers/{CORPUS_SID}", Reply(200, [JSON], VALID(CORPUS_SID, sim.base_url, jwt)))
        assert raw_request(mitmweb, "GET", f"{cp.url}/browsers/{CORPUS_SID}").status == 200
        assert learned_as(mitmweb, CORPUS_SID) == CORPUS_SID
        yield mitmweb


def learned_as(web: Mitmdump, prefix: str) -> str | None:
    """The id of the cached route whose id starts with `prefix`, as `browserrouting.routes` lists it."""
    routes = json.loads(web.command("browserrouting.routes"))
    return next((r["session_id"] for r in routes if r["session_id"].startswith(prefix)), None)


def through(
    web: Mitmdump,
    cp: ScriptedServer,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> tuple[RawAnswer, Seen]:
    """One request to the scripted CP that no rule applies to: both ends see the other's bytes."""
    got = raw_request(web, method, f"{cp.url}{target}", headers, body)
    seen = cp.seen(target)[-1]
    assert seen.reply is not None
    assert (got.status, got.headers, got.body) == (seen.reply.status, seen.reply.headers, seen.reply.body)
    assert (seen.method, seen.target, seen.body) == (method, target, body)
    assert seen.headers == request_headers(f"127.0.0.1:{cp.port}", headers, body)
    return got, seen


def assert_reaches_the_vm(
    web: Mitmdump, cp: ScriptedServer, sim: Simulator, sid: str, jwt: str, case: str
) -> None:
    """A routed request carries the learned jwt, percent-encoded, and no API key."""
    raw_request(web, "GET", f"{cp.url}/browsers/{sid}/fs/read_file?path=/{case}")
    hit = [r for r in vm_hits(sim, "/fs/read_file") if r["query"].startswith(f"path=/{case}&")][-1]
    assert parse_qs(hit["query"])["jwt"] == [jwt] and "authorization" not in hit["headers"]
    assert "x-injected" not in hit["headers"]


@pytest.mark.parametrize(("case", "body", "headers", "learns"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_a_bad_cp_answer_passes_untouched_and_teaches_nothing(
    web: Mitmdump,
    cp: ScriptedServer,
    sim: Simulator,
    case: str,
    body: Body,
    headers: tuple[tuple[str, str], ...],
    learns: str | None,
) -> None:
    since = len(web.output)
    sid = f"bad-{case}"
    live = sim.jwt_for(sim.create_browser()["session_id"])
    cp.on(f"/browsers/{sid}", Reply(200, list(headers), body(sid, sim.base_url, live)))
    through(web, cp, "GET", f"/browsers/{sid}", [AUTH])
    found = learned_as(web, sid)
    assert (found is not None) is (learns is not None), f"learned {found!r}"
    if found is not None and learns is not None:
        assert_reaches_the_vm(web, cp, sim, found, live if learns == "live" else learns, case)
    assert crashes(web, since) == []


# --------------------------------------------------------------------------- client requests

B = "/browsers/{sid}"  # a cached route's browser
SECOND_KEY = [("Authorization", "Basic b3RoZXI=")]
ODD_TYPE = [("Content-Type", "application/x-\u00e9; q=\x01")]
# (case, method, target, extra headers, body, the tail it is routed to, or None: passthrough)
REQUESTS: list[tuple[str, str, str, list[tuple[str, str]], bytes, str | None]] = [
    ("encoded_slash_in_id", "GET", B + "%2Ffs/read_file", [], b"", None),
    ("encoded_slash_in_tail", "GET", B + "/fs%2Fread_file?path=/x", [], b"", None),
    ("encoded_dots", "GET", B + "/fs/%2e%2e/%2E%2E/secrets", [], b"", None),
    ("dots", "GET", B + "/fs/../../secrets", [], b"", None),
    ("nul_id", "GET", "/browsers/%00/fs/read_file", [], b"", None),
    ("empty_id", "GET", "/browsers//fs/read_file", [], b"", None),
    ("double_slash_after_id", "GET", B + "//fs/read_file", [], b"", None),
    ("blank_id", "GET", "/browsers/%20%20/fs/read_file", [], b"", None),
    ("not_allowlisted_prefix", "GET", B + "/fsx/read_file", [], b"", None),
    ("duplicate_authorization", "GET", B + "/replays", SECOND_KEY, b"", None),
    ("huge_header", "GET", B + "/replays", [("X-Big", "b" * 32_000)], b"", None),
    ("odd_content_type", "POST", B + "/replays", ODD_TYPE, b"\x00\xff", None),
    ("nul_in_tail", "GET", B + "/fs/%00?path=/x", [], b"", "fs/%00"),
    ("double_slash_in_tail", "GET", B + "/fs//read_file?path=/x", [], b"", "fs//read_file"),
    ("trailing_semicolon", "GET", B + "/fs/read_file;?path=/x", [], b"", "fs/read_file;"),
    ("long_path", "GET", B + "/fs/" + "a" * 8000, [], b"", "fs/" + "a" * 8000),
    ("routed_duplicate_authorization", "GET", B + "/fs/read_file?path=/x", SECOND_KEY, b"", "fs/read_file"),
]


@pytest.mark.parametrize(
    ("case", "method", "target", "extra", "body", "tail"), REQUESTS, ids=[r[0] for r in REQUESTS]
)
def test_an_odd_request_goes_on_untouched_or_routed_without_the_api_key(
    web: Mitmdump,
    cp: ScriptedServer,
    sim: Simulator,
    case: str,
    method: str,
    target: str,
    extra: list[tuple[str, str]],
    body: bytes,
    tail: str | None,
) -> None:
    since = len(web.output)
    target = target.replace("{sid}", CORPUS_SID)
    cp.on(target.partition("?")[0], Reply(200, [JSON, ("X-Case", case)], json.dumps({"case": case}).encode()))
    if tail is None:
        through(web, cp, method, target, [AUTH, *extra], body)
    else:
        sim.reset()
        got = raw_request(web, method, f"{cp.url}{target}", [AUTH, *extra], body)
        assert got.status == 200 and cp.seen(target) == []
        hits = vm_hits(sim)
        assert len(hits) == 1 and hits[0]["path"] == f"/browser/kernel/{tail}"
        assert "authorization" not in hits[0]["headers"]
    assert crashes(web, since) == []


# --------------------------------------------------------------------------- options set live


def options_of(web: Mitmdump) -> dict[str, Any]:
    """Every option's current value, as mitmweb's options API gives it."""
    return {name: spec["value"] for name, spec in web_api(web, "/options").items()}


BAD_OPTIONS = [
    ("browserrouting_control_plane", "ftp://127.0.0.1"),
    ("browserrouting_control_plane", "http://"),
    ("browserrouting_control_plane", "http://127.0.0.1:0"),
    ("browserrouting_control_plane", "http://127.0.0.1:99999"),
    ("browserrouting_control_plane", "http://127.0.0.1/v1"),
    ("browserrouting_control_plane", "http://user@127.0.0.1"),
    ("browserrouting_control_plane", "http://[::1"),
    ("browserrouting_control_plane", " , "),
    ("browserrouting_subresources", "fs/../curl"),
    ("browserrouting_subresources", "fs x"),
    ("browserrouting_vm_hosts", "127.0.0.2:443"),
    ("browserrouting_fallback", "telemetry/%zz"),
    ("browserrouting_mode", "proxy"),
    ("browserrouting_audit_window", "-1"),
    ("browserrouting_inject", "x=teapot"),
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS)
def test_a_bad_option_set_live_is_refused_and_the_previous_value_kept(
    web: Mitmdump, cp: ScriptedServer, sim: Simulator, name: str, value: str
) -> None:
    since = len(web.output)
    before = options_of(web)
    with pytest.raises(CommandFailed, match=name):
        web.command("set", name, value)
    assert options_of(web) == before
    sim.reset()
    assert raw_request(web, "GET", f"{cp.url}/browsers/{CORPUS_SID}/fs/read_file?path=/opt").status == 200
    assert len(vm_hits(sim, "/fs/read_file")) == 1  # still routed with the options it had
    assert crashes(web, since) == []
