"""What a tune found: every candidate's responses and rewards, the statistics, the choice, and how to show them
(the table, `--json`, the provenance summary, `--save-responses`, `--plot`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..fsutil import write_atomically
from ..plotting import pyplot, save_png
from .generation import Decoding, Response
from .statistics import CandidateStats, Recommendation


@dataclass
class Candidate:
    """One α as evaluated: every response with its reward, and where the time went."""

    alpha: float
    responses: list[Response]
    rewards: list[float]
    update_seconds: float  # writing θ(α) into the model
    generate_seconds: float
    score_seconds: float


@dataclass
class TuneResult:
    prompts: list[str]
    candidates: dict[float, Candidate]  # in the order evaluated
    stats: list[CandidateStats]  # sorted by α
    recommendation: Recommendation
    decoding: Decoding
    reward: str
    model_dtype: str
    device: str
    notes: list[str] = field(default_factory=list)

    @property
    def alpha(self) -> float:
        return self.recommendation.alpha

    def summary(self) -> dict[str, Any]:
        """What the chosen checkpoint's provenance and card record about how α was chosen."""
        return {
            "chosen_alpha": self.alpha,
            "reason": self.recommendation.reason,
            "warnings": self.recommendation.warnings,
            "reward": self.reward,
            "prompts": len(self.prompts),
            "decoding": self.decoding.to_json(),
            "model_dtype": self.model_dtype,
            "candidates": [
                {
                    "alpha": s.alpha,
                    "reward": _round(s.reward),
                    "gain": _round(s.gain),
                    "win_rate": _round(s.win_rate),
                    "length": round(s.length, 2),
                    "significant": s.significant,
                }
                for s in self.stats
            ],
        }

    def to_json(self) -> dict[str, Any]:
        timing = {
            f"{c.alpha:g}": {
                "update_seconds": c.update_seconds,
                "generate_seconds": c.generate_seconds,
                "score_seconds": c.score_seconds,
            }
            for c in self.candidates.values()
        }
        return {
            "alpha": self.alpha,
            "recommendation": self.recommendation.to_json(),
            "candidates": [{**s.to_json(), **timing[f"{s.alpha:g}"]} for s in self.stats],
            "evaluated_order": list(self.candidates),
            "prompts": len(self.prompts),
            "decoding": self.decoding.to_json(),
            "reward": self.reward,
            "model_dtype": self.model_dtype,
            "device": self.device,
            "notes": self.notes,
        }

    def table(self) -> list[str]:
        lines = [
            f"{'α':>8}  {'reward [95% CI]':<28}{'gain vs α=0 [95% CI]':<32}{'win rate':>9}  {'length':>7}  "
            f"{'gain at equal length':<30}"
        ]
        for s in self.stats:
            reward = f"{s.reward.estimate:.4g} [{s.reward.low:.4g}, {s.reward.high:.4g}]"
            if s.alpha == 0:
                lines.append(f"{0:>8g}  {reward:<28}{'(baseline)':<32}{'':>9}  {s.length:>7.1f}")
                continue
            mark = "*" if s.significant else ""
            lines.append(
                f"{s.alpha:>8g}  {reward:<28}{str(s.gain) + mark:<32}{s.win_rate.estimate:>9.0%}  "
                f"{s.length:>7.1f}  {s.gain_at_equal_length!s:<30}"
            )
        lines.append("* significant: the 95% interval of the paired gain excludes 0")
        lines.append(f"Chosen α = {self.alpha:g}: {self.recommendation.reason}")
        return lines

    def save_responses(self, path: str | Path) -> None:
        """Every prompt, response and reward as JSON lines, written atomically."""
        lines = []
        for c in self.candidates.values():
            for response, reward in zip(c.responses, c.rewards, strict=True):
                lines.append(
                    json.dumps(
                        {
                            "alpha": c.alpha,
                            "prompt_index": response.prompt,
                            "sample": response.sample,
                            "prompt": self.prompts[response.prompt],
                            "response": response.text,
                            "tokens": response.tokens,
                            "reward": reward,
                        },
                        ensure_ascii=False,
                    )
                )
        try:
            write_atomically(Path(path), ("\n".join(lines) + "\n").encode())
        except OSError as err:
            raise OutputError(f"--save-responses {path}: cannot write it ({err.strerror})") from err

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
        ax.set_title(f"expo tune: {len(self.prompts)} prompts, reward {Path(self.reward).name}")
        handles = ax.get_legend_handles_labels()[0] + lengths.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="best", fontsize="small")
        fig.tight_layout()
        save_png(fig, path)


def _round(interval: Any) -> list[float]:
    return [round(interval.estimate, 6), round(interval.low, 6), round(interval.high, 6)]
