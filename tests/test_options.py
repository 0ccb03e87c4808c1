"""The addon's options: parsing of each list, the allowlist's default from
$KERNEL_BROWSER_ROUTING_SUBRESOURCES, the defaults, and a bad value refused naming the option,
live (the previous values kept) and at start (mitmdump does not start)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from addon_harness import Harness, record, routed, running, wired
from conftest import proxy_options
from flows import browser, cp_flow, gone_response, json_response
from known import CP, CP_HOST, ROOT, SID, TEST_OPTIONS
from mitmdump_runner import Mitmdump
from mitmproxy import exceptions
from mitmproxy.addons.script import load_script
from mitmproxy.test import taddons
from simulator import Simulator

from addon import paths
from addon.paths import (
    DEFAULT_SUBRESOURCES,
    SUBRESOURCES_ENV,
    parse_host_globs,
    parse_list,
    parse_origins,
    parse_path_entries,
)
from addon.recorder import DecisionRecorder

# --------------------------------------------------------------- the allowlist's default from the environment


@contextlib.contextmanager
def env_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None) -> Iterator[Harness]:
    if env is None:
        monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    else:
        monkeypatch.setenv(SUBRESOURCES_ENV, env)
    options = {k: v for k, v in TEST_OPTIONS.items() if k != "browserrouting_subresources"}
    with running(tmp_path, monkeypatch, options) as harness:
        yield harness


@pytest.mark.parametrize(
    ("env", "default", "routed_tails", "not_routed_tails"),
    [
        ("telemetry", "telemetry", ["telemetry/events", "telemetry/stream"], ["fs/x", "curl/raw"]),
        ("", "", [], ["fs/x", "telemetry/stream", "curl/raw"]),
        (" fs , ,curl ", " fs , ,curl ", ["fs/x", "curl/raw"], ["telemetry/stream"]),
        (
            None,
            DEFAULT_SUBRESOURCES,
            ["telemetry/stream", "fs/x", "logs/stream"],
            ["telemetry/events", "logs"],
        ),
    ],
)
async def test_the_allowlist_defaults_to_the_env_var(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    default: str,
    routed_tails: list[str],
    not_routed_tails: list[str],
) -> None:
    with env_running(tmp_path, monkeypatch, env) as h:
        assert h.tctx.options.browserrouting_subresources == default
        await h.learn(browser())
        for tail in routed_tails:
            flow = await h.request(cp_flow("GET", f"/browsers/{SID}/{tail}"))
            assert record(flow)["decision"] == "routed", tail
        for tail in not_routed_tails:
            flow = await h.request(cp_flow("GET", f"/browsers/{SID}/{tail}"))
            assert (record(flow)["decision"], record(flow)["reason"]) == ("passthrough", "not_allowlisted"), (
                tail
            )


async def test_subresources_option_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with env_running(tmp_path, monkeypatch, "telemetry") as h:
        h.configure(browserrouting_subresources="fs")
        await h.learn(browser())
        assert record(await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x")))["decision"] == "routed"
        assert (
            record(await h.request(cp_flow("GET", f"/browsers/{SID}/telemetry/x")))["decision"]
            == "passthrough"
        )


async def test_bad_env_subresources_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        pytest.raises(exceptions.OptionsError, match="browserrouting_subresources"),
        env_running(tmp_path, monkeypatch, "fs,te lemetry"),
    ):
        pass  # pragma: no cover


def test_a_bad_env_default_is_blamed_on_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "telemetry/str eam")
    module = load_script(str(ROOT / "addon" / "browser_routing.py"))
    assert module is not None
    with (
        taddons.context(*module.addons) as tctx,
        pytest.raises(exceptions.OptionsError, match=r"\$KERNEL_BROWSER_ROUTING_SUBRESOURCES"),
    ):
        tctx.options.update(browserrouting_subresources="telemetry/str eam")


# --------------------------------------------------------------------------- defaults


async def test_the_defaults_route_kernels_own_cp_and_vm_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    with running(tmp_path, monkeypatch, {}) as h:
        opts = h.tctx.options
        assert opts.browserrouting_control_plane == "https://api.onkernel.com"
        assert opts.browserrouting_subresources == DEFAULT_SUBRESOURCES
        assert opts.browserrouting_fallback == "telemetry/events"
        assert opts.browserrouting_vm_hosts == "*.onkernel.com"
        assert h.router.origins == (("https", "api.onkernel.com", 443),)
        assert h.fallback.eligible == ("telemetry/events",)
        # the defaults work together against the real CP and VM host names
        h.tctx.configure(h.router, browserrouting_subresources="telemetry")
        real_base = "https://proxy.iad-1.onkernel.com:8443/browser/kernel"
        await h.exchange(
            cp_flow("POST", "/browsers", host="api.onkernel.com"),
            json_response(200, browser(base_url=real_base)),
        )
        flow = await h.request(cp_flow("GET", f"/browsers/{SID}/telemetry/events", host="api.onkernel.com"))
        assert flow.request.host == "proxy.iad-1.onkernel.com"
        await h.respond(flow, gone_response())
        assert record(flow)["decision"] == "fallback"
        assert h.reissues.sent[0].url == f"https://api.onkernel.com/browsers/{SID}/telemetry/events"


def test_the_default_allowlist_and_its_env_var_are_pinned() -> None:
    assert paths.DEFAULT_SUBRESOURCES == "curl,telemetry/stream,computer,playwright,process,fs,logs/stream"
    assert paths.SUBRESOURCES_ENV == "KERNEL_BROWSER_ROUTING_SUBRESOURCES"


async def test_the_log_is_off_by_default_and_can_be_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    with running(tmp_path, monkeypatch, TEST_OPTIONS) as h:
        assert h.tctx.options.browserrouting_log == str(h.log_path)
        h.configure(browserrouting_log="")
        await h.learn(browser())
        assert not h.log_path.exists() or h.log_path.read_text() == ""
        assert list(tmp_path.iterdir()) in ([], [h.log_path])
    with taddons.context(DecisionRecorder()) as tctx:
        assert tctx.options.browserrouting_log == ""


async def test_log_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for script in wired(browserrouting_log="~/decisions.jsonl"):
        await script.create("s1")
    assert '"route_cached"' in (tmp_path / "decisions.jsonl").read_text()


async def test_the_log_option_switches_the_file_live(h: Harness, tmp_path: Path) -> None:
    await h.learn(browser())
    second = tmp_path / "second.jsonl"
    h.configure(browserrouting_log=str(second))
    flow = await routed(h)
    await h.respond(flow, json_response(200, {}))
    assert [line["decision"] for line in h.log()] == ["route_cached", "passthrough"]
    assert [json.loads(line)["decision"] for line in second.read_text().splitlines()] == ["routed"]


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("browserrouting_control_plane", "api.example.test"),
        ("browserrouting_control_plane", "https://"),
        ("browserrouting_control_plane", "https://api.example.test/v1"),
        ("browserrouting_control_plane", "ftp://api.example.test"),
        ("browserrouting_control_plane", " , "),
        ("browserrouting_subresources", "fs,te lemetry"),
        ("browserrouting_subresources", "fs?x"),
        ("browserrouting_fallback", "telemetry/events?x"),
        ("browserrouting_fallback", 'telemetry/"events"'),
        ("browserrouting_vm_hosts", "bad host"),
        ("browserrouting_vm_hosts", "*.vm.test/path"),
        ("browserrouting_log", "/nonexistent-dir-for-test/x/decisions.jsonl"),
    ],
)
async def test_a_bad_option_is_refused_naming_it_and_the_previous_values_kept(
    h: Harness, option: str, value: str
) -> None:
    previous = getattr(h.tctx.options, option)
    state = (h.router.origins, h.router.subresources, h.router.vm_hosts, h.fallback.eligible)
    with pytest.raises(exceptions.OptionsError) as e:
        h.configure(**{option: value})
    assert option in str(e.value)
    assert getattr(h.tctx.options, option) == previous
    assert (h.router.origins, h.router.subresources, h.router.vm_hosts, h.fallback.eligible) == state
    # still working on the previous values, log included
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert record(flow)["decision"] == "fallback"
    assert h.log()[-1]["decision"] == "fallback"


async def test_bad_option_in_a_mixed_update_rolls_back_every_option(h: Harness) -> None:
    with pytest.raises(exceptions.OptionsError, match="browserrouting_control_plane"):
        h.configure(browserrouting_fallback="process/list", browserrouting_control_plane="nope")
    assert h.tctx.options.browserrouting_fallback == "telemetry/events"
    assert h.fallback.eligible == ("telemetry/events",)


def test_a_bad_option_at_start_stops_mitmdump_naming_the_option(sim: Simulator) -> None:
    for name, value in [
        ("browserrouting_control_plane", "api.onkernel.com"),
        ("browserrouting_subresources", "telemetry/str eam"),
        ("browserrouting_fallback", "telemetry/events?x"),
    ]:
        proxy = Mitmdump(proxy_options(sim, **{name: value}))
        with pytest.raises(RuntimeError, match=name):
            proxy.start(timeout=15)
        assert proxy.stop() not in (0, None)


# --------------------------------------------------------------------------- lists


async def test_option_lists_skip_empty_entries(h: Harness) -> None:
    h.configure(
        browserrouting_control_plane=f" ,{CP},, ",
        browserrouting_subresources=" ,fs,, telemetry/ ,",
        browserrouting_fallback=",telemetry/events,,",
        browserrouting_vm_hosts=", *.vm.test ,",
    )
    assert h.router.origins == (("https", CP_HOST, 443),)
    assert h.router.subresources == ("fs", "telemetry")
    assert h.fallback.eligible == ("telemetry/events",)
    assert h.router.vm_hosts == ("*.vm.test",)


async def test_fallback_option_one_entry_adds_an_endpoint(h: Harness) -> None:
    h.configure(browserrouting_fallback="telemetry/events, /process//list/")
    assert h.fallback.eligible == ("telemetry/events", "process/list")
    flow = await routed(h, f"/browsers/{SID}/process/list")
    await h.respond(flow, gone_response())
    assert record(flow)["decision"] == "fallback"
    assert h.reissues.sent[0].url == f"{CP}/browsers/{SID}/process/list"


async def test_fallback_option_empty_makes_nothing_eligible(h: Harness) -> None:
    h.configure(browserrouting_fallback="")
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_eligible")


def test_parse_list_skips_empty_entries() -> None:
    assert parse_list(" a, ,b,,  c ,") == ["a", "b", "c"]
    assert parse_list("") == []
    assert parse_list(" , ,") == []


def test_parse_path_entries_normalises_and_skips_empty() -> None:
    assert parse_path_entries("curl,, telemetry/stream/ , /fs//x,") == ("curl", "telemetry/stream", "fs/x")
    assert parse_path_entries("") == ()


@pytest.mark.parametrize("bad", ["te lemetry", "fs?x", "fs#x", 'a"b', "a<b", "/", "fs\\x", "a\tb"])
def test_parse_path_entries_rejects_bad_entry_naming_it(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_path_entries(f"curl,{bad},fs")
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("value", ["..", "./x", "telemetry/../fs", "tele%zz", "%2e%2e/x"])
def test_path_entries_with_dot_segments_or_bad_escapes_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a URL path"):
        paths.parse_path_entries(value)


def test_origins_parse_to_lowercase_scheme_host_and_port() -> None:
    assert parse_origins("https://api.example.test") == (("https", "api.example.test", 443),)
    assert parse_origins(" https://API.Example.test:8443/ ,, http://cp.test ") == (
        ("https", "api.example.test", 8443),
        ("http", "cp.test", 80),
    )


def test_origins_accept_any_case_a_port_ipv4_and_ipv6() -> None:
    assert paths.parse_origins("HTTPS://API.onkernel.com:8443/, http://127.0.0.1:8000 ,http://[::1]") == (
        ("https", "api.onkernel.com", 8443),
        ("http", "127.0.0.1", 8000),
        ("http", "::1", 80),
    )


@pytest.mark.parametrize(
    "bad",
    [
        "api.example.test",
        "https://",
        "ftp://api.example.test",
        "https://api.example.test/v1",
        "https://api.example.test?x=1",
        "https://user@api.example.test",
        "https://api.example.test:notaport",
        "https://api.example.test:99999",
    ],
)
def test_parse_origins_rejects_bad_entry_naming_it(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_origins(f"https://ok.test,{bad}")
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize(
    "value",
    [
        "https://api .onkernel.com",
        "https://*.onkernel.com",
        "https://a!.com",
        "https://h%20x.com",
        "https://host?",
        "https://host#",
        "https://host:0",
        "https://host:",
        "https://user@host",
    ],
)
def test_an_origin_with_a_bad_host_port_or_user_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        paths.parse_origins(value)


def test_parse_origins_requires_one() -> None:
    with pytest.raises(ValueError):
        parse_origins(" , ")


def test_host_globs_are_lowercased_and_bad_ones_refused_naming_them() -> None:
    assert parse_host_globs("*.vm.test, ,Proxy.EXAMPLE.test,*") == ("*.vm.test", "proxy.example.test", "*")
    for bad in ("a b", "a/b", "*.vm.test:8443/x"):
        with pytest.raises(ValueError) as e:
            parse_host_globs(f"*.ok.test,{bad}")
        assert repr(bad) in str(e.value)


def test_host_glob_with_a_port_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="without a port"):
        paths.parse_host_globs("proxy.onkernel.com:8443")
