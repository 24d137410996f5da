"""What a tune found: every candidate's responses and rewards, the statistics, the choice and its confirmation, and
how to show them (the table, `--json`, the provenance summary, `--save-responses`, `--plot`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...constants import VERSION
from ...errors import OutputError
from ...fsutil import write_atomically
from ...plotting import pyplot, save_png
from ..backends.generation import Decoding
from ..decision.candidate import Candidate
from ..decision.holdout import Split
from ..decision.lengthcontrol import length_controlled
from ..decision.power import Power
from ..decision.procedure import Outcome, outcome_json
from ..decision.selection import RULE, truncation_warnings
from ..decision.statistics import Bootstrap, CandidateStats, Interval
from ..objectives.judge import PairwiseJudge
from . import advice, reporting
from .reporting import RESULT

LC_DRAWS = 2000  # resamples behind the length-controlled win rate's interval
CUT_RISE = 0.05  # --output is refused (without --force) when the chosen α's cut rate exceeds α = 0's by this


@dataclass
class TuneResult:
    prompts: list[str]
    split: Split
    outcome: Outcome
    decoding: Decoding
    reward: str
    model_dtype: str
    device: str
    run_dir: Path
    budget: int
    inputs: dict[str, dict[str, str]]  # sft and aligned, as the provenance names them (never a local path)
    notes: list[str] = field(default_factory=list)
    power: Power | None = None
    confirm_reward: str | None = None  # the second reward that judged the held-out prompts
    output_name: str | None = None  # the --output folder's name, for the next steps (never its path)
    force: bool = False  # --force: --output is written even unconfirmed
    objective: str = "reward"  # "reward", "task" (lm-eval documents) or "judge" (pairwise against α = 0)
    judge: PairwiseJudge | None = None

    @property
    def alpha(self) -> float:
        """The α chosen on the selection prompts."""
        return self.outcome.recommendation.alpha

    @property
    def confirmed(self) -> bool:
        return self.outcome.confirmation.confirmed

    @property
    def stats(self) -> list[CandidateStats]:
        return self.outcome.stats

    @property
    def warnings(self) -> list[str]:
        """The recommendation's, and the held-out prompts' cut rates."""
        verdict = self.outcome.confirmation
        held_out = [s for s in (verdict.baseline, verdict.stats) if s is not None]
        return [*self.outcome.recommendation.warnings, *truncation_warnings(held_out, "held-out")]

    def cut_rates(self) -> dict[float, float]:
        """α = 0's and the chosen α's share of cut responses over both parts."""
        rates = {}
        for alpha in {0.0, self.alpha}:
            cuts = [cut for c in self._candidates() if c.alpha == alpha for cut in c.cut()]
            rates[alpha] = sum(cuts) / len(cuts) if cuts else 0.0
        return rates

    def not_written(self, force: bool = False) -> str | None:
        """Why --output is not written (None: it is): α = 0 chosen (there is nothing to write), or, unless
        `force`, nothing confirmed or the chosen α's answers cut much more often than α = 0's."""
        if self.alpha == 0:
            return "no candidate beats the aligned model (α = 0) on the selection prompts (expo merge writes any α)"
        if force:
            return None
        if not self.confirmed:
            return f"α={self.alpha:g} was chosen but {self.outcome.confirmation.note}; --force writes it anyway"
        rates = self.cut_rates()
        if rates[self.alpha] - rates[0.0] > CUT_RISE:
            return (
                f"α={self.alpha:g} cuts {rates[self.alpha]:.0%} of its answers (at --max-new-tokens or to fit the "
                f"reward model) against {rates[0.0]:.0%} at α=0, more than {CUT_RISE:.0%} more: its gain may be "
                "scored on unfinished answers; raise --max-new-tokens (--force writes it anyway)"
            )
        return None

    def gain_sd(self) -> float | None:
        """The SD of the per-prompt gain over α = 0 on the selection prompts (of the chosen α, else of the
        candidate with the highest mean reward): what turns the detectable gain into reward units."""
        others = [s for s in self.stats if s.alpha != 0]
        if not others:
            return None
        alpha = self.alpha if self.alpha != 0 else max(others, key=lambda s: s.reward.estimate).alpha
        prompts = self.split.selection
        gains = (
            self.outcome.selection[alpha].scores(prompts).prompt_rewards
            - self.outcome.selection[0.0].scores(prompts).prompt_rewards
        )
        return float(gains.std(ddof=1)) if len(gains) > 1 else None

    def _candidates(self) -> list[Candidate]:
        return [*self.outcome.selection.values(), *self.outcome.held_out.values()]

    def summary(self) -> dict[str, Any]:
        """What the chosen checkpoint's provenance and card record about how α was chosen."""
        return {
            "chosen_alpha": self.alpha,
            "rule": RULE,
            "reason": self.outcome.recommendation.reason,
            "confirmation": {
                "confirmed": self.confirmed,
                "prompts": self.outcome.confirmation.prompts,
                "note": self.outcome.confirmation.note,
                **({"gain": _round(self.outcome.confirmation.stats.gain)} if self.outcome.confirmation.stats else {}),
            },
            "warnings": self.warnings,
            "margin": self.outcome.recommendation.margin,
            "objective": self.objective,
            "reward": self.reward,
            **({"guard": self.outcome.guard.to_json()} if self.outcome.guard else {}),
            **({"confirm_reward": self.confirm_reward} if self.confirm_reward else {}),
            "prompts": len(self.prompts),
            "split": self.split.to_json(),
            "decoding": self.decoding.to_json(),
            "model_dtype": self.model_dtype,
            "search_stopped": self.outcome.stopped,
            "candidates": [
                {
                    "alpha": s.alpha,
                    "reward": _round(s.reward),
                    "gain": _round(s.gain_simultaneous),
                    "win_rate": _round(s.win_rate),
                    "length": round(s.length, 2),
                    "truncated": round(s.truncated, 4),
                    "significant": s.significant,
                }
                for s in self.stats
            ],
        }

    def to_json(self) -> dict[str, Any]:
        summary = outcome_json(self.outcome)
        return {
            **summary,
            "search": {"budget": self.budget, **summary["search"]},
            "inputs": self.inputs,
            "prompts": len(self.prompts),
            "split": self.split.to_json(),
            "win_rate": "per prompt (its samples' mean reward); win_rate_responses: sample s against sample s",
            "decoding": self.decoding.to_json(),
            "objective": self.objective,
            "reward": self.reward,
            "confirm_reward": self.confirm_reward,
            **({"judge": self.judge_summary()} if self.judge is not None else {}),
            "model_dtype": self.model_dtype,
            "device": self.device,
            "notes": self.notes,
            "warnings": self.warnings,
            "cut_rates": {f"{a:g}": rate for a, rate in sorted(self.cut_rates().items())},
            "next": self.next_steps(
                self.inputs.get("sft", {}).get("name"), self.inputs["aligned"]["name"], self.output_name, self.force
            ),
            **({"power": self.power.to_json(self.gain_sd())} if self.power else {}),
            "timing": {
                f"{c.part}:{c.alpha:g}": {
                    "update_seconds": c.update_seconds,
                    "generate_seconds": c.generate_seconds,
                    "score_seconds": c.score_seconds,
                    "tokens": sum(r.tokens for r in c.responses),
                }
                for c in self._candidates()
            },
            "run": {
                "dir": str(self.run_dir),
                "generated": sum(c.generated for c in self._candidates()),
                "reused": sum(len(c.responses) - c.generated for c in self._candidates()),
            },
        }

    @property
    def measure(self) -> str:
        """What a candidate's score is called: a reward, a task score, or a judge's credit against α = 0."""
        return {"task": "score", "judge": "judge credit"}.get(self.objective, "reward")

    @property
    def items(self) -> str:
        """What the statistics pair: prompts, or a task's documents."""
        return "documents" if self.objective == "task" else "prompts"

    def judge_summary(self) -> dict[str, Any]:
        """The judge's calls, and each candidate's raw and length-controlled win rate over α = 0."""
        assert self.judge is not None
        prompts = self.split.selection
        base = self.outcome.selection[0.0].scores(prompts)
        bootstrap = Bootstrap(len(prompts), LC_DRAWS, self.decoding.seed)
        rates = {}
        for alpha, candidate in sorted(self.outcome.selection.items()):
            if alpha == 0:
                continue
            scores = candidate.scores(prompts)
            raw = bootstrap.mean(scores.prompt_rewards)
            controlled = length_controlled(
                scores.prompt_rewards, scores.prompt_lengths - base.prompt_lengths, bootstrap
            )
            rates[f"{alpha:g}"] = {"win_rate": _round(raw), "length_controlled": _round(controlled)}
        cache = self.judge.cache
        kept = cache.verdicts.values() if cache is not None else []
        return {
            "model": self.judge.model,
            "calls": self.judge.calls,
            "requests": self.judge.requests,
            "verdicts_kept": len(cache) if cache is not None else 0,
            "malformed": sum(v.verdict == "malformed" for v in kept),
            "candidates": rates,
        }

    def table(self) -> list[str]:
        several = self.decoding.samples_per_prompt > 1
        lines = [
            f"{'α':>8}  {self.measure + ' [95% CI]':<28}{'gain vs α=0 [simultaneous CI]':<34}{'win rate':>9}"
            f"{'  win/resp' if several else ''}  {'length':>7}  {'cut':>4}  gain at equal length"
        ]
        for s in self.stats:
            reward = f"{s.reward.estimate:.4g} [{s.reward.low:.4g}, {s.reward.high:.4g}]"
            cut = f"{s.truncated:>4.0%}"
            if s.alpha == 0:
                gain, win, equal = "(baseline)", " " * (19 if several else 9), ""
            else:
                gain = str(s.gain_simultaneous) + ("*" if s.significant else "")
                win = f"{s.win_rate.estimate:>9.0%}" + (f"{s.win_rate_responses.estimate:>10.0%}" if several else "")
                equal = str(s.gain_at_equal_length)
            row = f"{s.alpha:>8g}  {reward:<28}{gain:<34}{win}"
            lines.append(f"{row}  {s.length:>7.1f}  {cut}  {equal}".rstrip())
        others = len(self.stats) - 1
        lines.append(f"* significant among the {others} candidate(s): the simultaneous 95% interval excludes 0")
        if any(s.length_fit_prompts < len(self.split.selection) for s in self.stats):
            lines.append("gain at equal length: prompts with a cut response on either side left out of the fit")
        if several:
            lines.append("win rate: per prompt (mean over its samples); win/resp: sample against sample")
        lines.append(f"Search: {len(self.outcome.selection)} candidate(s), stopped: {self.outcome.stopped}")
        lines.append(
            f"Chosen α = {self.alpha:g} on {len(self.split.selection)} selection {self.items}: "
            f"{self.outcome.recommendation.reason}"
        )
        if self.outcome.guard is not None:
            guard = self.outcome.guard
            lines.append(f"Guard {guard.name}, loss vs α=0 at most {guard.max_loss:g} (simultaneous 95% intervals):")
            for check in guard.checks.values():
                if check.alpha != 0:
                    verdict = "admitted" if check.admissible else "excluded"
                    lines.append(f"  α={check.alpha:g}: score {check.score:.4g}, loss {check.loss}: {verdict}")
        if self.judge is not None:
            for alpha, rates in self.judge_summary()["candidates"].items():
                raw, controlled = rates["win_rate"], rates["length_controlled"]
                lines.append(
                    f"  α={alpha}: win rate vs α=0 {raw[0]:.1%}, length-controlled {controlled[0]:.1%} "
                    f"[{controlled[1]:.1%}, {controlled[2]:.1%}]"
                )
        lines.append(f"Held out: {self.outcome.confirmation.note}")
        verdict = self.outcome.confirmation
        if verdict.stats is not None and verdict.baseline is not None:
            lines.append(
                f"  cut answers on the held-out prompts: α=0 {verdict.baseline.truncated:.0%}, "
                f"α={self.alpha:g} {verdict.stats.truncated:.0%}; gain without prompts with a cut answer: "
                f"{verdict.stats.gain_without_cut} ({verdict.stats.length_fit_prompts} prompts)"
            )
        return lines

    def records(self) -> list[dict[str, Any]]:
        """Every prompt, response and reward: the lines of --save-responses, the data of the report (with a judge,
        α = 0's answer beside each and the judge's raw verdicts in both orders)."""
        records = [
            {
                "alpha": c.alpha,
                "part": c.part,
                "prompt_index": response.prompt,
                "sample": response.sample,
                "prompt": self.prompts[response.prompt],
                "response": response.text,
                "tokens": response.tokens,
                "finish": response.finish,
                "response_cut": cut and not response.truncated,  # too long for the reward model: its end cut
                "reward": reward,
            }
            for c in self._candidates()
            for response, reward, cut in zip(c.responses, c.rewards, c.cut(), strict=True)
        ]
        if self.judge is not None:
            baseline = {
                (c.part, r.prompt, r.sample): r.text for c in self._candidates() if c.alpha == 0 for r in c.responses
            }
            for record in records:
                reference = baseline.get((record["part"], record["prompt_index"], record["sample"]))
                if reference is not None:
                    record["reference"] = reference
                    record["verdicts"] = self.judge.explain(record["prompt"], record["response"], reference)
        return records

    def save_responses(self, path: str | Path) -> None:
        """Every prompt, response and reward as JSON lines, written atomically."""
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.records())
        try:
            write_atomically(Path(path), lines.encode())
        except OSError as err:
            raise OutputError(f"--save-responses {path}: cannot write it ({err.strerror})") from err

    def save_result(self) -> None:
        """The --json report and every response, into the run folder: what `expo report RUN` renders again."""
        data = {"expo": VERSION, "report": self.to_json(), "records": self.records()}
        write_atomically(self.run_dir / RESULT, json.dumps(data, ensure_ascii=False).encode())

    def next_steps(self, sft: str | None, aligned: str, output: str | None, force: bool = False) -> list[str]:
        """The commands to type next (`advice`), naming the inputs and output as given."""
        return advice.next_steps(self, sft, aligned, output, self.not_written(force) if output else None)

    def write_report(self, path: str | Path) -> None:
        """The self-contained HTML report (`reporting`)."""
        reporting.write(path, self.to_json(), self.records())

    def plot(self, path: str | Path) -> None:
        """Mean reward (with 95% intervals) and mean length against α."""
        plt = pyplot()
        alphas = [s.alpha for s in self.stats]
        means = [s.reward.estimate for s in self.stats]
        errors = [
            [s.reward.estimate - s.reward.low for s in self.stats],
            [s.reward.high - s.reward.estimate for s in self.stats],
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.errorbar(alphas, means, yerr=errors, marker="o", capsize=3, color="tab:blue", label="mean reward (95% CI)")
        ax.axvline(self.alpha, color="tab:green", linestyle=":", label=f"chosen α = {self.alpha:g}")
        ax.set_xlabel("α")
        ax.set_ylabel("reward", color="tab:blue")
        lengths = ax.twinx()
        lengths.plot(alphas, [s.length for s in self.stats], marker="s", color="tab:orange", label="mean length")
        lengths.set_ylabel("response length (tokens)", color="tab:orange")
        ax.set_title(f"expo tune: {len(self.split.selection)} selection prompts, reward {Path(self.reward).name}")
        handles = ax.get_legend_handles_labels()[0] + lengths.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="best", fontsize="small")
        fig.tight_layout()
        save_png(fig, path)


def _round(interval: Interval) -> list[float]:
    return [round(interval.estimate, 6), round(interval.low, 6), round(interval.high, 6)]
