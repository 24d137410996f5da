"""A small OpenAI-compatible judge for the tests: POST /v1/chat/completions on 127.0.0.1, judging by a known rule so
that the expected scores are known.

Rules: "w7" (the response with more of the word `word`, by default w7, wins; equal counts tie: no position bias),
"first" (always A: pure position bias). Faults: `failures` (HTTP codes answered, in order, before any verdict; 429
and 503 carry Retry-After: 0), `malformed` (how many of the first verdicts are worded so that no verdict can be
read), `redirect_to` (every request answered `redirect_code`, 307 by default, to that URL; a GET is recorded too).
Every request is recorded: its two responses, in the order shown, and its Authorization header.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN = re.compile(r"## Response A\n(.*)\n\n## Response B\n(.*)\n\nWhich response", re.S)


@dataclass
class Judge:
    rule: str = "w7"
    word: str = "w7"
    failures: list[int] = field(default_factory=list)
    malformed: int = 0
    redirect_to: str | None = None
    redirect_code: int = 307
    requests: list[dict] = field(default_factory=list)  # every request received
    asked: list[tuple[str, str]] = field(default_factory=list)  # (A, B) of every verdict given
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verdict(self, first: str, second: str) -> str:
        if self.rule == "first":
            return "A"
        a, b = first.split().count(self.word), second.split().count(self.word)
        return "A" if a > b else "B" if b > a else "tie"


def credit(response: str, reference: str) -> float:
    """What the "w7" rule gives a response against its reference over both orders."""
    a, b = response.split().count("w7"), reference.split().count("w7")
    return 1.0 if a > b else 0.0 if b > a else 0.5


def serve(judge: Judge) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with judge.lock:
                judge.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                if judge.redirect_to:
                    return self._answer(judge.redirect_code, b"", {"Location": judge.redirect_to})
                if judge.failures:
                    code = judge.failures.pop(0)
                    return self._answer(code, b'{"error": "busy"}', {"Retry-After": "0"})
                shown = SHOWN.search(body["messages"][0]["content"])
                assert shown is not None and self.path == "/v1/chat/completions"
                first, second = shown.group(1), shown.group(2)
                judge.asked.append((first, second))
                text = judge.verdict(first, second)
                if judge.malformed:
                    judge.malformed -= 1
                    text = f"Both have merits; I lean to {text} perhaps."
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            self._answer(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

        def do_GET(self) -> None:  # noqa: N802 - what a followed 302 becomes
            with judge.lock:
                judge.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            self._answer(404, b"", {})

        def _answer(self, code: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(code)
            for name, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
