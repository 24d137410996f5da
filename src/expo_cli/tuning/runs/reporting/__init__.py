"""The tune report: one self-contained HTML page that shows what α does to the answers.

The page holds the inputs and settings (as the provenance names them, never a local path), the reward and length
curves against α (static SVG from matplotlib), the statistics table with the held-out confirmation, and a prompt
browser: every prompt's responses side by side with their rewards, the words that differ from α = 0 marked, cut
responses flagged, sorted by gain, reward spread or length change, filtered by text.

Nothing in it reaches the network: styles, script, data and figures are inline, and a Content-Security-Policy
allows only its own script (by hash). Prompts and responses are untrusted text: they travel as JSON escaped for a
script element (Jinja's `tojson`) and reach the page through `textContent` only; every other value goes through
Jinja's autoescaping.

`report(source, output)` renders a finished run again: a run folder (its `result.json`) or a `--save-responses`
file, whose statistics are recomputed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from ....constants import VERSION
from ....errors import InputError, OutputError, UsageError, first_line
from ....fsutil import write_atomically
from ....lines import json_lines
from ....plotting import pyplot
from ...backends.generation import Response
from ...decision.candidate import CONFIRMATION, SELECTION, Candidate, NotGenerated
from ...decision.holdout import Split
from ...decision.procedure import judge, outcome_json

RESULT = "result.json"  # what a finished tune leaves in its run folder: the --json report and every response


def report(source: str | Path, output: str | Path) -> Path:
    """Render the report of a finished tune from its run folder or its --save-responses file; return the page."""
    summary, records = load(Path(source))
    write(output, summary, records)
    return Path(output)


def write(output: str | Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """The page, written atomically."""
    try:
        write_atomically(Path(output), render(summary, records).encode())
    except OSError as err:
        raise OutputError(f"--report {output}: cannot write it ({err.strerror})") from err


def render(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The page; a summary or records of the wrong shape (an edited or foreign file) are an input error."""
    try:
        return _render(summary, records)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"not the result of this expo tune ({type(err).__name__}: {err})") from err


def _render(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    try:
        from jinja2 import Environment  # the tune extra (torch brings it too)
    except ImportError as err:
        raise UsageError("--report needs jinja2: pip install 'expo-cli[tune]'") from err

    template = _asset("page.html.j2")
    script = _asset("page.js")
    environment = Environment(autoescape=True, keep_trailing_newline=True)
    environment.globals["interval"] = _interval
    inputs = summary.get("inputs") or {}
    names = [inputs[role]["name"] for role in ("sft", "aligned") if role in inputs]
    compared = summary["alpha"] if summary["alpha"] else _best_other(summary)
    return environment.from_string(template).render(
        report=summary,
        title=" → ".join(names) or "a tune",
        compared=compared,
        charts=charts(summary),
        data=_page_data(summary, records, compared),
        style=_asset("page.css"),
        script=script,
        script_hash="sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode(),
    )


def load(source: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the --json report, every response) of a finished tune: a run folder or a --save-responses file."""
    if source.is_dir():
        path = source / RESULT
        if not path.is_file():
            raise InputError(
                f"{source.name}: no {RESULT} in it: the tune did not finish; run the same expo tune command again "
                "to finish it (it resumes)"
            )
        try:
            saved = json.loads(path.read_text())
            version, summary, records = saved.get("expo"), saved["report"], saved["records"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{source.name}/{RESULT}: unreadable ({err})") from err
        if version != VERSION:
            raise InputError(
                f"{source.name}/{RESULT}: written by {f'expo {version}' if version else 'an earlier expo'}, this is "
                f"{VERSION}; run the same expo tune command again (it reuses every kept response) to render it"
            )
        return summary, records
    if not source.is_file():
        raise InputError(f"{source}: no such run folder or responses file")
    return _recomputed(source)


def _recomputed(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The statistics of a --save-responses file, computed again as the tune computed them."""
    try:
        text = path.read_text(encoding="utf-8")
        records = [value for _, value in json_lines(text, lambda n, why: ValueError(f"line {n}: {why}"))]
        candidates = _candidates(records)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path.name}: not a --save-responses file of expo tune ({first_line(err)})") from err
    if (SELECTION, 0.0) not in candidates:
        raise InputError(f"{path.name}: no α = 0 responses on the selection prompts to compare against")
    parts = {SELECTION: set(), CONFIRMATION: set()}
    for (part, _), candidate in candidates.items():
        parts[part].update(r.prompt for r in candidate.responses)
    held = len(parts[CONFIRMATION])
    split = Split(sorted(parts[SELECTION]), sorted(parts[CONFIRMATION]), held / (held + len(parts[SELECTION])))

    def held_out(alpha: float) -> dict[float, Candidate]:
        if (CONFIRMATION, alpha) not in candidates or (CONFIRMATION, 0.0) not in candidates:
            raise NotGenerated(f"α={alpha:g} has no held-out responses in {path.name}")
        return {a: candidates[CONFIRMATION, a] for a in (0.0, alpha)}

    selection = {a: c for (part, a), c in sorted(candidates.items()) if part == SELECTION}
    outcome = judge(selection, "not recorded", split, held_out, seed=0)
    summary = {
        **outcome_json(outcome),
        "prompts": len({r["prompt_index"] for r in records}),
        "split": split.to_json(),
        "reward": "not recorded in a responses file",
        "notes": [f"statistics recomputed from {path.name} (bootstrap seed 0)"],
    }
    return summary, records


def _candidates(records: list[dict[str, Any]]) -> dict[tuple[str, float], Candidate]:
    """The records of each (part, α) as the Candidate the tune evaluated."""
    grouped: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        part = record.get("part", SELECTION)
        if part not in (SELECTION, CONFIRMATION):
            raise ValueError(f"unknown part {part!r}")
        grouped[part, float(record["alpha"])].append(record)
    return {
        key: Candidate(
            alpha=key[1],
            part=key[0],
            responses=[
                Response(r["prompt_index"], r["sample"], r["response"], r["tokens"], r.get("finish", "stop"))
                for r in group
            ],
            rewards=[float(r["reward"]) for r in group],
            update_seconds=0.0,
            generate_seconds=0.0,
            score_seconds=0.0,
            generated=0,
            unfit=[bool(r.get("response_cut", False)) for r in group],
        )
        for key, group in grouped.items()
    }


def charts(summary: dict[str, Any]) -> str:
    """Mean reward (95% intervals, the held-out comparison beside it) and mean length against α, as inline SVG."""
    plt = pyplot("--report")  # matplotlib: the tune extra
    candidates = summary["candidates"]
    alphas = [c["alpha"] for c in candidates]
    figures = []
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    means = [c["reward"]["estimate"] for c in candidates]
    errors = _error_bars([c["reward"] for c in candidates])
    ax.errorbar(alphas, means, yerr=errors, marker="o", capsize=3, label="selection prompts (95% CI)")
    confirmation = summary.get("confirmation") or {}
    if confirmation.get("stats"):
        gain = confirmation["stats"]["gain"]
        base = means[alphas.index(0.0)]
        ax.errorbar(
            [confirmation["alpha"]],
            [base + gain["estimate"]],
            yerr=_error_bars([gain]),
            marker="s",
            capsize=3,
            color="tab:green",
            label="held out: α = 0's mean + its gain",
        )
    ax.axvline(summary["alpha"], color="tab:green", linestyle=":", label=f"chosen α = {summary['alpha']:g}")
    ax.set_xlabel("α")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize="small")
    figures.append(fig)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    lengths = [c["length_interval"] for c in candidates]
    ax.errorbar(
        alphas,
        [i["estimate"] for i in lengths],
        yerr=_error_bars(lengths),
        marker="s",
        capsize=3,
        color="tab:orange",
        label="mean length, tokens (95% CI)",
    )
    ax.plot(
        alphas, [100 * c["truncated"] for c in candidates], marker="x", color="tab:red", label="% cut at the limit"
    )
    ax.set_xlabel("α")
    ax.set_ylabel("tokens / % cut")
    ax.legend(fontsize="small")
    figures.append(fig)
    return "".join(_svg(plt, f) for f in figures)


def _error_bars(intervals: list[dict[str, float]]) -> list[list[float]]:
    """matplotlib's yerr: the distances below and above each estimate."""
    return [[i["estimate"] - i["low"] for i in intervals], [i["high"] - i["estimate"] for i in intervals]]


def _svg(plt: Any, fig: Any) -> str:
    """The figure as an inline <svg> element: text kept as text, no date, nothing external."""
    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "expo"}):
        fig.tight_layout()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)  # RDF naming its creator
    return text[text.index("<svg") :]


def _page_data(summary: dict[str, Any], records: list[dict[str, Any]], compared: float) -> dict[str, Any]:
    """What the prompt browser needs: per prompt, its text and every candidate's responses."""
    prompts: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = r.get("part", SELECTION), r["prompt_index"]
        entry = prompts.setdefault(key, {"index": key[1], "part": key[0], "text": r["prompt"], "responses": {}})
        samples = entry["responses"].setdefault(f"{r['alpha']:g}", [])
        samples.append(
            {"text": r["response"], "reward": r["reward"], "tokens": r["tokens"], "finish": r.get("finish")}
        )
    alphas = sorted({r["alpha"] for r in records})
    return {
        "alphas": [f"{a:g}" for a in alphas],
        "baseline": "0",
        "chosen": f"{summary['alpha']:g}",
        "compared": f"{compared:g}",
        "prompts": list(prompts.values()),
    }


def _best_other(summary: dict[str, Any]) -> float:
    """The candidate a page compares with α = 0 when α = 0 itself was chosen: the best other by mean reward."""
    others = [c for c in summary["candidates"] if c["alpha"] != 0]
    return max(others, key=lambda c: c["reward"]["estimate"])["alpha"] if others else 0.0


def _interval(value: dict[str, float] | None, signed: bool = True) -> str:
    if not value:
        return "n/a"
    sign = "+" if signed else ""
    return f"{value['estimate']:{sign}.4g} [{value['low']:{sign}.4g}, {value['high']:{sign}.4g}]"


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
