"""A loopback server that answers every request with one recorded exchange, verbatim.

Status, headers and body are sent as recorded (``content-length`` is recomputed, since bodies
were stored decompressed); server-sent-event bodies are sent as recorded, in one piece.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORDINGS = Path(__file__).parent / "recordings"
_HOP = {"content-length", "transfer-encoding", "content-encoding", "connection"}


@dataclass(frozen=True)
class Recording:
    """One recorded exchange (see ``tests/recordings/SOURCES.md``)."""

    name: str
    provider: str
    status: int
    headers: dict[str, str]
    body: str
    request: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> Recording:
        raw = json.loads((RECORDINGS / f"{name}.json").read_text(encoding="utf-8"))
        response = raw["response"]
        return cls(
            name,
            raw["provider"],
            int(response["status"]),
            dict(response.get("headers") or {}),
            response.get("body") or "",
            raw.get("request") or {},
        )

    def requested_model(self) -> str | None:
        """The model the recorded request named, if its body was recorded."""
        body = self.request.get("body")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                return None
        return body.get("model") if isinstance(body, dict) else None

    def as_sse(self) -> Recording:
        """A JSON-array stream body (``streamGenerateContent`` without ``alt=sse``) as SSE."""
        chunks = json.loads(self.body)
        body = "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks)
        headers = self.headers | {"content-type": "text/event-stream"}
        return Recording(self.name, self.provider, self.status, headers, body, self.request)


class ReplayServer:
    """Serve :attr:`recording` to every request on 127.0.0.1; remember the paths asked for."""

    def __init__(self) -> None:
        self.recording: Recording | None = None
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length") or 0))
                server.paths.append(self.path)
                self._answer()

            do_GET = do_POST  # noqa: N815

            def _answer(self) -> None:
                rec = server.recording
                assert rec is not None, "no recording to replay"
                data = rec.body.encode("utf-8")
                self.send_response_only(rec.status)
                for name, value in rec.headers.items():
                    if name.lower() not in _HOP:
                        self.send_header(name, value)
                if not any(k.lower() == "content-type" for k in rec.headers) and data:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        """Base URLs of the three SDKs pointing here, with placeholder keys."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "OPENAI_BASE_URL": f"{self.url}/v1",
            "GOOGLE_GEMINI_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "sk-ant-replay-000000000000",
            "OPENAI_API_KEY": "sk-replay-000000000000000",
            "GEMINI_API_KEY": "replay-gemini-key-0000000",
        }

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
