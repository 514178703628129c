"""A page of another origin that uses the API the way a browser app would: a tiny static server
on its own port (so its origin differs from the service's), serving one page whose script queues
a task with `fetch`, mints a stream token and follows the task with `EventSource`.

    with PageServer() as server:          # http://127.0.0.1:<port>/
        ... navigate a browser to server.url, then evaluate followTask(base, key, message)

What the script saw is on `window.__follow` for the test to read over CDP.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>cross-origin client</title></head><body>
<script>
const FINAL = ["SUCCESS", "FAILURE", "REVOKED"];

// an EventSource on `url`, recording every event it dispatches (by the SSE names the events
// route documents) into `out`; a server-sent `error` event has data, the EventSource's own
// connection error has none
function follow(url, out) {
  out.events = [];
  out.connectionErrors = [];
  out.done = false;
  const source = new EventSource(url);
  for (const name of ["state", "progress", "chunk", "reconnect", "error"]) {
    source.addEventListener(name, (e) => {
      if (e.data === undefined) {  // CONNECTING: it tries again by itself (with Last-Event-ID); CLOSED: gave up
        out.connectionErrors.push(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
        out.closed = source.readyState === EventSource.CLOSED;
        return;
      }
      const data = JSON.parse(e.data);
      out.events.push({name, id: e.lastEventId, data});
      if ((name === "state" && FINAL.includes(data.state)) || name === "error") {
        source.close();
        out.done = true;
      }
    });
  }
  return source;
}

// queue a streaming echo task, mint a stream token for it and follow its events
window.followTask = async (base, key, message) => {
  const out = window.__follow = {};
  const queued = await fetch(`${base}/api/v1/agents/echo/invoke-async`, {
    method: "POST",
    headers: {"X-API-Key": key, "Content-Type": "application/json", "Idempotency-Key": `page-${Date.now()}`},
    body: JSON.stringify({message, stream: true, metadata: {delay: 0.05}}),
  });
  out.queued = {status: queued.status, requestId: queued.headers.get("X-Request-ID"),
                location: queued.headers.get("Location"), rateLimit: queued.headers.get("RateLimit-Limit")};
  const task = await queued.json();
  const minted = await fetch(`${base}/api/v1/agents/tasks/${task.task_id}/stream-token`,
                             {method: "POST", headers: {"X-API-Key": key}});
  const grant = await minted.json();
  out.minted = {status: minted.status, expiresIn: grant.expires_in, taskId: grant.task_id};
  follow(`${base}/api/v1/agents/tasks/${task.task_id}/events?token=${encodeURIComponent(grant.token)}`, out);
  return task.task_id;
};

// what a fetch of `url` gives this page: "read <status>" or the error it rejected with
window.tryFetch = async (url, init) => {
  try {
    const resp = await fetch(url, init);
    return `read ${resp.status}`;
  } catch (e) {
    return `${e.name}: ${e.message}`;
  }
};

window.followUrl = (url) => { follow(url, window.__follow = {}); };
</script>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path not in ("/", "/index.html"):
            self.send_error(404)
            return
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output is the service's, not this page's


class PageServer:
    """The page on http://127.0.0.1:<a free port>/, served from a thread until the context ends."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{self.origin}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"page-server-{self._server.server_address[1]}", daemon=True)

    def __enter__(self) -> PageServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
