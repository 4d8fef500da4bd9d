"""The coordinator's query pages over HTTP: ``/`` and ``/queries`` list running and recent
queries (``/queries.json`` as JSON), ``/queries/<id>`` is a query's profile page and
``/queries/<id>.json`` its explain tree as JSON; while a query runs both show its live tree
(``explain/live.py``) and the page reloads itself every second.

With a token, every request (whatever its route or method) needs ``Authorization: Bearer
<token>``: the check sits in ``parse_request``, before any route runs. Everything shown is
escaped (ids are client-chosen text) and bodies are encoded so that any received text renders.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

from otel_dist.errors import one_line
from otel_dist.explain.format import format_duration
from otel_dist.explain.html import render_html
from otel_dist.explain.json_tree import tree_to_dict
from otel_dist.explain.live import LiveQueries
from otel_dist.explain.model import ExplainTree
from otel_dist.explain.recent import RecentQueries
from otel_dist.http_auth import UNAUTHORIZED_BODY, WWW_AUTHENTICATE, bearer_allowed, printable

log = logging.getLogger(__name__)

LIVE_REFRESH_S = 1


class QueryPagesServer:
    """A small threaded HTTP server over a ``RecentQueries`` store."""

    def __init__(
        self,
        recent: RecentQueries,
        host: str = "127.0.0.1",
        port: int = 0,
        trace_url_template: str | None = None,
        live: LiveQueries | None = None,
        token: str | None = None,
    ) -> None:
        """``live`` adds the queries still running (from the coordinator's progress);
        ``token``: the bearer token every request must carry (None: no authentication)."""
        self.recent = recent
        self.live = live
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

    def queries(self) -> list[dict[str, object]]:
        """Running queries (``status`` running, oldest first), then recent ones, newest first."""
        running = [
            {
                "query_id": q["query_id"],
                "status": "running",
                "sql": q["sql"],
                "trace_id": q["trace_id"],
                "started_at": int(q["start_ns"]) / 1e9,
                "finished_at": None,
                "duration_ns": q["elapsed_ns"],
                "error": None,
                "stages": q["stages"],
            }
            for q in (self.live.list() if self.live is not None else [])
        ]
        ids = {q["query_id"] for q in running}
        recent = [
            {
                "query_id": q.query_id,
                "status": q.status,
                "sql": q.sql,
                "trace_id": q.trace_id,
                "started_at": q.finished_at - q.duration_ns / 1e9,
                "finished_at": q.finished_at,
                "duration_ns": q.duration_ns,
                "error": q.error,
            }
            for q in self.recent.list()
            if q.query_id not in ids
        ]
        return running + recent

    def index(self) -> str:
        queries = self.queries()
        rows = "".join(_index_row(q) for q in queries)
        running = any(q["status"] == "running" for q in queries)
        refresh = f"<meta http-equiv='refresh' content='{LIVE_REFRESH_S}'>" if running else ""
        return (
            f"<!doctype html><html><head><meta charset='utf-8'>{refresh}"
            "<title>otel_dist queries</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:24px}td,th{padding:3px 10px;"
            "text-align:left;border-bottom:1px solid #eee;font-size:13px}"
            ".running{color:#0969da;font-weight:600}.error{color:#cf222e}</style></head><body>"
            "<h1>Queries</h1><table><tr><th>query</th><th>started</th><th>duration</th>"
            f"<th>status</th><th>progress</th><th>SQL</th></tr>{rows}</table></body></html>"
        )

    def query_tree(self, query_id: str) -> tuple[ExplainTree, bool] | None:
        """A query's tree and whether it is still running; None when unknown."""
        if self.live is not None:
            tree = self.live.tree(query_id)
            if tree is not None:
                return tree, True
        query = self.recent.get(query_id)
        return None if query is None else (query.tree(), False)


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
            if path == "/queries.json":
                self._send(HTTPStatus.OK, "application/json", json.dumps(pages.queries()))
                return
            if path.startswith("/queries/"):
                name = unquote(path[len("/queries/") :], errors="surrogatepass")
                as_json = name.endswith(".json") and pages.query_tree(name) is None
                found = pages.query_tree(name.removesuffix(".json") if as_json else name)
                if found is not None:
                    tree, running = found
                    if as_json:
                        self._send(
                            HTTPStatus.OK, "application/json", json.dumps(tree_to_dict(tree))
                        )
                    else:
                        page = render_html(tree, pages.trace_url_template)
                        if running:  # reload until it ends, then the finished profile stays
                            page = page.replace("<head>", f"<head>{_REFRESH}", 1)
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


_REFRESH = f"<meta http-equiv='refresh' content='{LIVE_REFRESH_S}'>"


def _index_row(query: dict[str, object]) -> str:
    status = _e(query["status"])
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(query["started_at"])))  # type: ignore[arg-type]
    progress = ""
    stages = query.get("stages")
    if isinstance(stages, list) and stages:
        done = sum(int(s["done"]) for s in stages)
        total = sum(int(s["task_count"]) for s in stages)
        running = sum(int(s["running"]) for s in stages)
        progress = f"{done}/{total} tasks done, {running} running"
    sql = html.escape(" ".join(_without_comments(str(query["sql"])).split())[:160])
    query_id = _e(query["query_id"])
    link = _e(quote(str(query["query_id"]), safe="", errors="surrogatepass"))
    return (
        f"<tr data-query='{query_id}' data-status='{status}'>"
        f"<td><a href='/queries/{link}'>{query_id}</a></td>"
        f"<td>{started}</td><td>{format_duration(query['duration_ns'])}</td>"  # type: ignore[arg-type]
        f"<td class='{status}'>{status}</td><td>{progress}</td><td><code>{sql}</code></td></tr>"
    )


_LEADING_COMMENTS = re.compile(r"\A(?:\s*(?:--[^\n]*(?:\n|\Z)|/\*.*?\*/))*\s*", re.DOTALL)


def _without_comments(sql: str) -> str:
    """The statement without its leading comment lines (TPC-H files start with a header),
    so that the listing shows the query itself."""
    return _LEADING_COMMENTS.sub("", sql, count=1) or sql
