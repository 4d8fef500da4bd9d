"""The coordinator's query pages over HTTP: ``/`` lists recent queries, ``/queries/<id>``
is a query's profile page and ``/queries/<id>.json`` its explain tree as JSON."""

from __future__ import annotations

import html
import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from otel_dist.explain.format import format_duration
from otel_dist.explain.html import render_html
from otel_dist.explain.json_tree import tree_to_dict
from otel_dist.explain.recent import RecentQueries


class QueryPagesServer:
    """A small threaded HTTP server over a ``RecentQueries`` store."""

    def __init__(
        self,
        recent: RecentQueries,
        host: str = "127.0.0.1",
        port: int = 0,
        trace_url_template: str | None = None,
    ) -> None:
        self.recent = recent
        self.trace_url_template = trace_url_template
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
            f"<tr><td><a href='/queries/{q.query_id}'>{q.query_id}</a></td>"
            f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(q.finished_at))}</td>"
            f"<td>{format_duration(q.duration_ns)}</td><td>{q.status}</td>"
            f"<td><code>{html.escape(' '.join(_without_comments(q.sql).split())[:160])}</code>"
            "</td></tr>"
            for q in self.recent.list()
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>otel_dist queries</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:24px}td,th{padding:3px 10px;"
            "text-align:left;border-bottom:1px solid #eee;font-size:13px}</style></head><body>"
            "<h1>Recent queries</h1><table><tr><th>query</th><th>finished</th><th>duration</th>"
            f"<th>status</th><th>SQL</th></tr>{rows}</table></body></html>"
        )


def _handler_for(pages: QueryPagesServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("", "/queries"):
                self._send(HTTPStatus.OK, "text/html", pages.index())
                return
            if path.startswith("/queries/"):
                name = path[len("/queries/") :]
                as_json = name.endswith(".json")
                query = pages.recent.get(name.removesuffix(".json"))
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
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


_LEADING_COMMENTS = re.compile(r"\A(?:\s*(?:--[^\n]*(?:\n|\Z)|/\*.*?\*/))*\s*", re.DOTALL)


def _without_comments(sql: str) -> str:
    """The statement without its leading comment lines (TPC-H files start with a header),
    so that the listing shows the query itself."""
    return _LEADING_COMMENTS.sub("", sql, count=1) or sql
