"""The QA report: one self-contained HTML page from decision logs. `log` reads the logs, `facts`,
`conformance` and `timeline` build the page's parts, `text` shapes what it shows, `page` renders
the template beside them."""

from .log import OPTIONS
from .page import LogSource, render, write_report

__all__ = ["OPTIONS", "LogSource", "render", "write_report"]
