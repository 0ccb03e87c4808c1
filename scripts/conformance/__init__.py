"""`scripts/conform`: runs clients that route Kernel browser calls by themselves (an SDK, released
or from a branch) through a real mitmweb in audit mode, case by case, and gives a verdict per case
(docs/conform.md).

Modules: cli (the command line), clients (what each CLIENT means, the install cache), driver (the
runner's side of the driver protocol), service (the simulator or the live service, and deleting
what a run created), proxy (the audit proxy, used from the outside), caserun (one case's ops and
their flows), cases, cases_routing and cases_fallback (the cases), judge (verdicts, --expect),
runner (one client's run and the repros), scrub (secrets out of what is written), outputs (the
matrix, JSON), junit, page (the HTML report). drivers/ holds the drivers: the reference client and
those of the Python and Node SDKs.
"""
