"""What the routing addon costs, against plain mitmdump, on loopback; prints one table with targets.

Throughput: three proxies run at once against one simulator, pinned together on one core
(`taskset`; the simulator, the clients and the load generator on the other cores): plain
`mitmdump`, `mitmdump -s scripts/empty_hooks.py` (mitmproxy's charge for any addon) and
`mitmdump -s addon/browser_routing.py` (no decision log). Each gets the same mix, per 20
requests: 16 non-browser API calls (GET and POST; the simulator's CP answers 404 JSON), 1
browser metadata GET, 1 non-allowlisted browser subresource, 2 routed (a GET `fs/read_file`
and a POST `process/exec`). `wrk` with wrk.lua sends it (`scripts/setup
--bench` installs wrk); without wrk, a Python load generator with the same mix and the same
keep-alive connections does. Requests are counted at the servers (the simulator's records,
by the X-Bench-Proxy header each request carries), in consecutive windows while all three
run, so machine noise hits the three proxies alike. The windows are spread over several fresh
starts of the three (`--starts`): one process of the same code runs a few percent faster or
slower than the next for as long as it lives (where it landed in memory, its hash seed), which
windows of a single start would read as the addon's cost. The table gives the median
[min-max] of the per-window ratios, the notes each start's median. It runs twice: against the
simulator's CP over plain HTTP, where a routed request costs the addon a TLS exchange with the
VM that plain mitmdump leaves to the CP, and against its CP over HTTPS (`cp_tls`, absolute-form
`https://` targets), as the live service is served, where both proxies pay TLS upstream for
every request.

Instructions (`--instructions`): each proxy under valgrind's callgrind, sent the mix over the
same number of kept-alive connections, 40 requests a connection to warm up, then 100 a
connection counted from the first sent to the last answered; the instructions counted divided
by the requests. The same code reads the same to within about 0.3 %, where the live ratio moves
by a few percent: the figure to compare commits by. It counts user-space instructions only,
not cache misses, which the live ratio pays for too.

Memory: RSS of mitmdump+addon fed 100,000 routes (400 CP list pages of 250 browsers whose
cdp_ws_url jwt is 175 characters, from a loopback CP of the bench's own) minus RSS of a
control mitmdump+addon fed the same bytes with the pages' base_url refused by
browserrouting_vm_hosts.

Latency figures (requests one at a time, interleaved, medians per round): a routed request
against the same VM request sent through plain mitmdump; a fallback against the VM hop plus
the CP hop through plain mitmdump; 50 concurrent fallbacks against one (the CP answering in
0.5 s, the VM in 0.2 s); the SSE first event routed against straight from the VM; a routed
request with 100,000 routes cached against 10. Their targets keep them where they were
before issue 9's work, as this bench measured them (KEEP in base.py).

Routes file: with browserrouting_routes_file set and 10,000 routes cached, the time a list
page of 250 new browsers takes to pass, plus the longest stall of other requests until the
file holds them, against the same page through an addon without a routes file; the figure
is the difference per changed route (a full rewrite of the file a change costs ~100 ms).

Ratios are what to read: absolute times depend on the machine, ratios much less. `--quick`
is a short run with fewer windows and samples, the memory figure scaled from 10,000 routes
and the routes-file figure at 1,000 routes. Not a test: `--strict` exits 1 when a target fails.

Run from the repository: `.venv/bin/python scripts/bench` (`--help` for the options); with
scripts/ on sys.path, `python -m bench` does the same.

Modules: cli (the command line and the table), base (what the parts share: Figure, the
targets, the settings, the proxies and where they run), throughput, load (the request mix
and its load generators; wrk.lua for wrk), instructions (callgrind), latency, fleet (the
bench's own CP and VM of many browsers) and routes (memory, lookup and the routes file).
"""
