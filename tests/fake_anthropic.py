"""A scripted fake of the Anthropic Messages API for tests, served on 127.0.0.1.

Tests point the real SDK at it (`base_url=fake.url` or `ANTHROPIC_BASE_URL`) and queue
one reply per expected HTTP request: a tool_use message, an Anthropic-style error with a
status code, or a hang (for timeouts). Every request received is recorded with its
headers and JSON body. Errors carry `retry-after-ms: 1` so the SDK's own retry loop runs
for real but without its production backoff.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


def tool_message(name: str, tool_input: Any, *, input_tokens: int = 1000, output_tokens: int = 200,
                 model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    """A Messages API reply holding one tool_use block."""
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": name, "input": tool_input}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


class FakeAnthropic:
    """The server; `script` is consumed one entry per request, `requests` records them."""

    def __init__(self) -> None:
        self.script: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # a short poll interval keeps `stop` (and so each test's teardown) fast
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- scripting -----------------------------------------------------------------
    def reply_tool(self, name: str, tool_input: Any, **usage: int) -> None:
        self.script.append({"status": 200, "body": tool_message(name, tool_input, **usage)})

    def reply_tools(self, *calls: tuple[str, Any], text: str | None = None) -> None:
        """One reply holding several tool_use blocks (name, input), in order, after an optional text block."""
        body = tool_message("unused", {})
        body["content"] = ([{"type": "text", "text": text}] if text else []) + [
            {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": name, "input": tool_input}
            for name, tool_input in calls]
        self.script.append({"status": 200, "body": body})

    def tool_results(self, index: int = -1) -> list[dict[str, Any]]:
        """The tool_result blocks the client sent in request `index` (its last user turn)."""
        messages = self.requests[index]["body"].get("messages", [])
        last = messages[-1]["content"] if messages else []
        return [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(last, list) else []

    def reply_cut(self, name: str, tool_input: Any) -> None:
        """A reply cut off by max_tokens (stop_reason "max_tokens"), its tool input partial."""
        body = tool_message(name, tool_input)
        body["stop_reason"] = "max_tokens"
        self.script.append({"status": 200, "body": body})

    def reply_text(self, text: str) -> None:
        body = tool_message("unused", {})
        body["content"] = [{"type": "text", "text": text}]
        body["stop_reason"] = "end_turn"
        self.script.append({"status": 200, "body": body})

    def reply_error(self, status: int, message: str = "scripted failure") -> None:
        kind = _ERROR_TYPES.get(status, "api_error")
        self.script.append({"status": status, "body": {"type": "error", "error": {"type": kind, "message": message}}})

    def reply_hang(self, seconds: float) -> None:
        """Send nothing for `seconds` (the client times out first), then a 500."""
        self.script.append({"hang": seconds})

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> "FakeAnthropic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers at once
        self._server.shutdown()
        self._server.server_close()

    def _next(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(request)
            if self.script:
                return self.script.popleft()
        return {"status": 500, "body": {"type": "error", "error": {"type": "api_error",
                                                                  "message": "fake server: script exhausted"}}}

    def _handler(self) -> type:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                step = fake._next({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                   "raw": raw.decode("utf-8", "replace")})
                if "hang" in step:
                    fake._stop.wait(step["hang"])
                    step = {"status": 500, "body": {"type": "error", "error": {"type": "api_error", "message": "late"}}}
                payload = json.dumps(step["body"]).encode()
                try:
                    self.send_response(step["status"])
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.send_header("request-id", f"req_{uuid.uuid4().hex[:8]}")
                    if step["status"] != 200:
                        self.send_header("retry-after-ms", "1")
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

        return Handler
