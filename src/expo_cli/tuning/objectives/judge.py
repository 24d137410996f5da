"""A pairwise judge as tune's objective: each candidate's answer against α = 0's answer to the same prompt (and
sample), as AlpacaEval 2 and Arena-Hard compare against a reference model.

The judge is any OpenAI-compatible chat-completions endpoint (`--judge-url`; the key from EXPO_JUDGE_API_KEY or
OPENAI_API_KEY, sent only there: redirects are refused), a hosted model or a local one served by vLLM or llama.cpp.
Each pair is asked in both orders, so that a judge's position bias cancels; a verdict is A, B or a tie, and the
candidate's score is its mean credit over the two orders (1 a win, ½ a tie, 0 a loss): 0, ¼, ½, ¾ or 1. α = 0 against
itself, and any answer equal to α = 0's, is a tie without a call. The statistics then compare these scores with α = 0's
(all ½): the gain over α = 0 is the win rate minus one half.

Every verdict is kept as it is made (`VerdictCache`, in the run folder): keyed by the judge, its template, the prompt
and both answers in their order, so a resumed run, a --rescore or another candidate with the same answer never pays
for a call twice. A verdict the judge words otherwise is kept as malformed and counted as a tie (the count is
reported). Calls are capped (`budget`, refused before starting when the run could need more) and retried through
rate limits and server errors with exponential backoff (honouring Retry-After).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...errors import ExpoError, InputError, UsageError, first_line
from ...lines import json_lines

KEY_VARIABLES = ("EXPO_JUDGE_API_KEY", "OPENAI_API_KEY")
RETRIED = (429, 500, 502, 503, 504)
ATTEMPTS = 6
BACKOFF = 1.0  # seconds before the first retry, doubled each time (a Retry-After header takes precedence)
LONGEST_WAIT = 60.0
LARGEST_ANSWER = 1 << 20  # bytes of a judge's HTTP answer read at most
TEMPLATE = """You are comparing two responses to the same instruction. Judge which response follows the instruction \
better: helpfulness, correctness and clarity. Ignore the order in which the responses are shown, and do not prefer \
a response for its length.

## Instruction
{instruction}

## Response A
{output_1}

## Response B
{output_2}

Which response is better? Answer with exactly one word: A, B, or tie."""
VERDICT = re.compile(r"^[\s\[\(\*\"'`]*(A|B|tie)[\s\]\)\*\"'`.!]*$", re.IGNORECASE)
CREDIT = {"A": 1.0, "B": 0.0, "tie": 0.5}  # the credit of the response shown as A


class Refused(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the key goes to the endpoint named, nowhere else."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirected ({msg}); redirects are refused", headers, fp)


@dataclass
class Verdict:
    verdict: str  # "A", "B", "tie", or "malformed"
    raw: str  # what the judge answered

    @property
    def credit(self) -> float:
        """The credit of the response shown first (a malformed verdict counts as a tie)."""
        return CREDIT.get(self.verdict, 0.5)


def parse_verdict(text: str) -> str:
    """A, B or tie from the judge's answer (a last line saying it also counts); malformed otherwise."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for candidate in (text.strip(), lines[-1] if lines else ""):
        found = VERDICT.match(candidate)
        if found:
            word = found.group(1)
            return "tie" if word.lower() == "tie" else word.upper()
    return "malformed"


class VerdictCache:
    """The verdicts made so far, in one folder: each process appends to a file of its own (no two writers share a
    file), and every file is read at the start."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.verdicts: dict[str, Verdict] = {}
        self.file = folder / f"verdicts-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        for path in sorted(folder.glob("verdicts-*.jsonl")) if folder.is_dir() else []:
            text = path.read_bytes().decode("utf-8", errors="replace")
            complete = text[: text.rfind("\n") + 1]  # a line a crash cut short is left out

            def corrupt(number: int, why: str, name: str = path.name) -> UsageError:
                return UsageError(f"--run-dir: judge/{name} line {number} is not a verdict ({why}); pass --fresh")

            for _, record in json_lines(complete, corrupt):
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    self.verdicts[record["key"]] = Verdict(str(record.get("verdict")), str(record.get("raw", "")))

    def __len__(self) -> int:
        return len(self.verdicts)

    def get(self, key: str) -> Verdict | None:
        return self.verdicts.get(key)

    def add(self, key: str, verdict: Verdict) -> None:
        self.verdicts[key] = verdict
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "verdict": verdict.verdict, "raw": verdict.raw}
        with open(self.file, "ab") as fh:
            fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class PairwiseJudge:
    """A reward that scores (prompt, response) against α = 0's response to the same prompt: `pairwise`."""

    url: str
    model: str
    template: str = TEMPLATE
    budget: int | None = None  # calls this process may make
    timeout: float = 120.0
    cache: VerdictCache | None = None  # set once the run folder is open
    calls: int = 0  # verdicts asked by this process
    requests: int = 0  # HTTP requests made (retries included)
    pairwise: bool = field(default=True, init=False)
    cuts: dict[Any, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--judge-url {self.url!r}: an http(s) URL of an OpenAI-compatible API (…/v1)")
        for field_name in ("instruction", "output_1", "output_2"):
            if "{" + field_name + "}" not in self.template:
                raise UsageError(f"--judge-template: it must contain {{{field_name}}}")
        if self.budget is not None and self.budget < 0:
            raise UsageError(f"--judge-budget {self.budget}: a number of calls, 0 or more")

    @property
    def name(self) -> str:
        return f"judge {self.model} vs α=0"

    def identity(self) -> dict[str, Any]:
        """The judge model, its endpoint's host and the template: what its verdicts depend on."""
        return {
            "judge": self.model,
            "host": urlsplit(self.url).hostname,
            "template": hashlib.sha256(self.template.encode()).hexdigest()[:16],
        }

    def key(self, prompt: str, first: str, second: str) -> str:
        text = json.dumps([self.identity(), prompt, first, second], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str] | None = None
    ) -> list[float]:
        """Each response's mean credit over both orders against its reference (α = 0's answer)."""
        if references is None:
            raise ValueError("a pairwise judge scores a response against a reference")
        scores = []
        for prompt, response, reference in zip(prompts, responses, references, strict=True):
            if response == reference:
                scores.append(0.5)
                continue
            first = self.verdict(prompt, response, reference).credit
            second = 1.0 - self.verdict(prompt, reference, response).credit
            scores.append((first + second) / 2)
        return scores

    def uncached(self, prompt: str, response: str, reference: str) -> int:
        """How many of the two orders of (response, reference) would still cost a call."""
        orders = ((response, reference), (reference, response))
        return sum(self.cache is None or self.cache.get(self.key(prompt, *order)) is None for order in orders)

    def explain(self, prompt: str, response: str, reference: str) -> list[dict[str, str]]:
        """The kept verdicts on a response against its reference, in both orders (none for an equal answer)."""
        if response == reference or self.cache is None:
            return []
        found = []
        for order, (first, second) in (
            ("response first", (response, reference)),
            ("α=0 first", (reference, response)),
        ):
            kept = self.cache.get(self.key(prompt, first, second))
            if kept is not None:
                found.append({"order": order, "verdict": kept.verdict, "raw": kept.raw})
        return found

    def verdict(self, prompt: str, first: str, second: str) -> Verdict:
        """The judge's verdict on (prompt, A = first, B = second), from the cache or asked."""
        key = self.key(prompt, first, second)
        if self.cache is not None and (kept := self.cache.get(key)) is not None:
            return kept
        if self.budget is not None and self.calls >= self.budget:
            raise UsageError(
                f"--judge-budget {self.budget}: reached; the verdicts so far are kept in the run folder: raise the "
                "budget and run the same command to go on"
            )
        text = self.template.format(instruction=prompt, output_1=first, output_2=second)
        self.calls += 1
        raw = self._ask(text)
        verdict = Verdict(parse_verdict(raw), raw)
        if self.cache is not None:
            self.cache.add(key, verdict)
        return verdict

    def _ask(self, text: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_tokens": 16,
        }
        headers = {"Content-Type": "application/json"}
        key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        opener = urllib.request.build_opener(Refused)
        where = f"--judge-url {urlsplit(self.url).netloc}"
        for attempt in range(ATTEMPTS):
            wait = BACKOFF * 2**attempt
            try:
                self.requests += 1
                with opener.open(request, timeout=self.timeout) as answer:
                    data = answer.read(LARGEST_ANSWER + 1)
            except urllib.error.HTTPError as err:
                if 300 <= err.code < 400:
                    raise InputError(
                        f"{where}: the judge redirected (HTTP {err.code}); redirects are refused, so that the key "
                        "goes only where --judge-url says: pass the final URL"
                    ) from err
                if err.code not in RETRIED or attempt == ATTEMPTS - 1:
                    hint = " (check the key in EXPO_JUDGE_API_KEY)" if err.code in (401, 403) else ""
                    raise InputError(f"{where}: the judge answered HTTP {err.code}{hint}") from err
                wait = _retry_after(err.headers.get("Retry-After") if err.headers else None, wait)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == ATTEMPTS - 1:
                    raise InputError(f"{where}: cannot reach the judge ({first_line(err)})") from err
            except ExpoError:
                raise
            else:
                return _content(data, where)
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(header: str | None, default: float) -> float:
    try:
        seconds = float(header) if header is not None else default
    except ValueError:
        seconds = default
    return min(max(seconds, 0.0), LONGEST_WAIT) if math.isfinite(seconds) else default


def _content(data: bytes, where: str) -> str:
    """The first choice's message text of a chat-completions answer, checked."""
    if len(data) > LARGEST_ANSWER:
        raise InputError(f"{where}: the judge's answer is larger than {LARGEST_ANSWER} bytes")
    try:
        answer = json.loads(data)
        content = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise InputError(f"{where}: not a chat-completions answer ({first_line(err)})") from err
    if not isinstance(content, str):
        raise InputError(f"{where}: the judge's message is not text")
    return content
