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
    environment.globals["verdict"] = verdict
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
    """Inline SVG: the gain over α = 0 with the intervals the choice used, the mean reward, and length with cut
    answers on their own axis."""
    plt = pyplot("--report")  # matplotlib: the tune extra
    return "".join(_svg(plt, draw(plt, summary)) for draw in (_gain_chart, _reward_chart, _length_chart))


SIZE = (8.0, 4.2)  # inches: the page shows each chart about 770 pixels wide


def _label(ax: Any, chosen: float, ylabel: str) -> None:
    """The chosen α (drawn behind the data, so no interval hides under it), the axes' names and the legend."""
    ax.axvline(chosen, color="tab:green", linestyle=":", alpha=0.6, zorder=0, label=f"chosen α = {chosen:g}")
    ax.set_xlabel("α")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")


def _gain_chart(plt: Any, summary: dict[str, Any]) -> Any:
    """Each α's gain over α = 0 with its simultaneous 95% interval (the one that decides significance), and the
    held-out gain beside the chosen α."""
    fig, ax = plt.subplots(figsize=SIZE)
    others = [c for c in summary["candidates"] if c["alpha"] != 0 and c.get("gain_simultaneous")]
    for significant in (True, False):
        shown = [c for c in others if c["significant"] is significant]
        if shown:
            _intervals(
                ax,
                [c["alpha"] for c in shown],
                [c["gain_simultaneous"] for c in shown],
                fmt="o",
                color="tab:blue",
                markerfacecolor="tab:blue" if significant else "white",
                label="selection: significant (simultaneous 95% CI)" if significant else "selection: not significant",
            )
    confirmation = summary.get("confirmation") or {}
    stats = confirmation.get("stats")
    if stats and stats.get("gain"):
        alphas = [c["alpha"] for c in summary["candidates"]]
        beside = 0.02 * (max(alphas) - min(alphas) or 1.0)  # beside the selection bar, not on it
        _intervals(
            ax,
            [confirmation["alpha"] + beside],
            [stats["gain"]],
            fmt="s",
            color="tab:green",
            label="held out (its look's level)",
        )
    ax.axhline(0, color="grey", linewidth=0.8, zorder=0)
    _label(ax, summary["alpha"], "gain in mean reward over α = 0")
    return fig


def _reward_chart(plt: Any, summary: dict[str, Any]) -> Any:
    """Mean reward against α on the selection prompts, each with its own 95% interval."""
    fig, ax = plt.subplots(figsize=SIZE)
    candidates = summary["candidates"]
    _intervals(
        ax,
        [c["alpha"] for c in candidates],
        [c["reward"] for c in candidates],
        marker="o",
        label="mean reward, selection prompts (95% CI each)",
    )
    _label(ax, summary["alpha"], "mean reward")
    return fig


def _length_chart(plt: Any, summary: dict[str, Any]) -> Any:
    """Mean length in tokens, and the share of answers cut, each on its own axis."""
    fig, ax = plt.subplots(figsize=SIZE)
    candidates = summary["candidates"]
    alphas = [c["alpha"] for c in candidates]
    _intervals(
        ax,
        alphas,
        [c["length_interval"] for c in candidates],
        marker="s",
        color="tab:orange",
        label="mean length, tokens (95% CI)",
    )
    ax.set_xlabel("α")
    ax.set_ylabel("tokens")
    cut = ax.twinx()
    cut.plot(alphas, [100 * c["truncated"] for c in candidates], marker="x", color="tab:red", label="% cut")
    cut.set_ylabel("% of answers cut")
    cut.set_ylim(0, max(5.0, 110 * max(c["truncated"] for c in candidates)))
    handles = ax.get_legend_handles_labels()[0] + cut.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize="small")
    return fig


def verdict(summary: dict[str, Any]) -> str:
    """The outcome in plain words: the mean reward before and after, and how often the chosen α wins."""
    alpha = summary["alpha"]
    candidates = {c["alpha"]: c for c in summary["candidates"]}
    if alpha == 0:
        best = _best_other(summary)
        if best == 0:
            return "Only α = 0 was evaluated."
        return (
            f"No α beat the aligned model: mean reward {candidates[0.0]['reward']['estimate']:.3g} at α = 0; the "
            f"best other, α = {best:g}, scored {candidates[best]['reward']['estimate']:.3g}, not significantly more."
        )
    confirmation = summary.get("confirmation") or {}
    stats = confirmation.get("stats")
    if stats and stats.get("gain") and stats.get("win_rate"):
        after, gain = stats["reward"]["estimate"], stats["gain"]["estimate"]
        where, wins = f"the {confirmation['prompts']} held-out prompts", stats["win_rate"]["estimate"]
    else:
        chosen = candidates[alpha]
        after, gain, wins = (chosen[key]["estimate"] for key in ("reward", "gain", "win_rate"))
        where = f"the {summary['split']['selection']} selection prompts"
    return (
        f"On {where}, α = {alpha:g} moved the mean reward from {after - gain:.3g} to {after:.3g} and won "
        f"{wins:.0%} of them against α = 0."
    )


def _intervals(ax: Any, alphas: list[float], intervals: list[dict[str, float]], **style: Any) -> None:
    """Each interval's estimate with its bar from low to high."""
    below = [i["estimate"] - i["low"] for i in intervals]
    above = [i["high"] - i["estimate"] for i in intervals]
    ax.errorbar(alphas, [i["estimate"] for i in intervals], yerr=[below, above], capsize=3, **style)


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
            {"text": r["response"], "reward": r["reward"], "tokens": r["tokens"], "finish": r.get("finish"),
             **({"verdicts": r["verdicts"]} if r.get("verdicts") else {})}
        )  # fmt: skip
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
