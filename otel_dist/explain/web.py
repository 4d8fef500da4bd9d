"""The coordinator's query pages over HTTP: ``/`` lists recent queries, ``/queries/<id>``
is a query's profile page and ``/queries/<id>.json`` its explain tree as JSON.

With a token, every request (whatever its route or method) needs ``Authorization: Bearer
<token>``: the check sits in ``parse_request``, before any route runs. Everything shown is
escaped (ids are client-chosen text) and bodies are encoded so that any received text renders.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

from otel_dist.errors import one_line
from otel_dist.explain.format import format_duration
from otel_dist.explain.html import render_html
from otel_dist.explain.json_tree import tree_to_dict
from otel_dist.explain.recent import RecentQueries
from otel_dist.http_auth import UNAUTHORIZED_BODY, WWW_AUTHENTICATE, bearer_allowed, printable

log = logging.getLogger(__name__)


class QueryPagesServer:
    """A small threaded HTTP server over a ``RecentQueries`` store."""

    def __init__(
        self,
        recent: RecentQueries,
        host: str = "127.0.0.1",
        port: int = 0,
        trace_url_template: str | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: the bearer token every request must carry (None: no authentication)."""
        self.recent = recent
        self.trace_url_template = trace_url_template
        self.token = token
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="query-pages", daemon=True
        )

    def start(self) -> QueryPagesServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def index(self) -> str:
        rows = "".join(
            f"<tr><td><a href='/queries/{_e(quote(q.query_id, safe='', errors='surrogatepass'))}'>{_e(q.query_id)}</a>"
            f"</td><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(q.finished_at))}</td>"
            f"<td>{_e(format_duration(q.duration_ns))}</td><td>{_e(q.status)}</td>"
            f"<td><code>{html.escape(' '.join(q.sql.split())[:160])}</code></td></tr>"
            for q in self.recent.list()
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>otel_dist queries</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:24px}td,th{padding:3px 10px;"
            "text-align:left;border-bottom:1px solid #eee;font-size:13px}</style></head><body>"
            "<h1>Recent queries</h1><table><tr><th>query</th><th>finished</th><th>duration</th>"
            f"<th>status</th><th>SQL</th></tr>{rows}</table></body></html>"
        )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _handler_for(pages: QueryPagesServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def parse_request(self) -> bool:
            """The one authentication check: a refused request reaches no route."""
            if not super().parse_request():
                return False
            if bearer_allowed(self.headers.get("Authorization"), pages.token):
                return True
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", WWW_AUTHENTICATE)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(UNAUTHORIZED_BODY)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(UNAUTHORIZED_BODY)
            return False

        def do_GET(self) -> None:
            try:
                self._get()
            except Exception as error:  # a reply, never a dropped connection
                log.warning("query page %s failed", printable(self.path), exc_info=True)
                message = f"the page could not be rendered: {one_line(error)}\n"
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", message)

        def _get(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("", "/queries"):
                self._send(HTTPStatus.OK, "text/html", pages.index())
                return
            if path.startswith("/queries/"):
                name = unquote(path[len("/queries/") :], errors="surrogatepass")
                as_json = name.endswith(".json") and pages.recent.get(name) is None
                query = pages.recent.get(name.removesuffix(".json") if as_json else name)
                if query is not None:
                    tree = query.tree()
                    if as_json:
                        self._send(
                            HTTPStatus.OK, "application/json", json.dumps(tree_to_dict(tree))
                        )
                    else:
                        page = render_html(tree, pages.trace_url_template)
                        self._send(HTTPStatus.OK, "text/html", page)
                    return
            self._send(HTTPStatus.NOT_FOUND, "text/plain", "no such query\n")

        def _send(self, status: HTTPStatus, content_type: str, body: str) -> None:
            data = body.encode("utf-8", "backslashreplace")  # lone surrogates too
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler
