"""α: the paper's extrapolation coefficient, its lists (sweeps) and per-tensor rules.

θ_expo = θ_aligned + α·(θ_aligned − θ_sft). Rules give some tensors another α than the run's: the first rule
whose regular expression is found in the tensor name wins. A rule that matches no tensor is an error, so a
typo cannot silently leave a model unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import UsageError


def formula(alpha: float) -> str:
    """The update with the numbers filled in, in both equivalent forms (`θ_aligned − 0.5·(…)`, never `+ -0.5`)."""
    return f"θ_expo = θ_aligned {_term(alpha)}·(θ_aligned − θ_sft) = θ_sft {_term(1 + alpha)}·(θ_aligned − θ_sft)"


def _term(x: float) -> str:
    return f"− {-x:g}" if x < 0 else f"+ {abs(x):g}"


FLOAT32_MAX = 3.4028234663852886e38


def check_alpha(alpha: float, option: str = "--alpha") -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise UsageError(f"{option}: {alpha} is not a finite number")
    if abs(alpha) > FLOAT32_MAX:  # the arithmetic is float32: such an α cannot even be held
        raise UsageError(f"{option}: {alpha:g} is beyond float32's range (±3.4e38)")
    return alpha


def parse_alphas(values: Iterable[str | float]) -> list[float]:
    """`["0.1,0.3", "0.5"]` -> [0.1, 0.3, 0.5]: comma lists and repeated options, duplicates refused."""
    alphas: list[float] = []
    for value in values:
        for part in str(value).split(","):
            try:
                alphas.append(check_alpha(float(part.strip())))
            except ValueError as err:
                raise UsageError(f"--alpha: {part.strip()!r} is not a number") from err
    if not alphas:
        raise UsageError("--alpha is required")
    return check_alphas(alphas)


def check_alphas(alphas: Iterable[float]) -> list[float]:
    """Finite and distinct: a repeated α would write (or evaluate) the same thing twice."""
    checked = [check_alpha(a) for a in alphas]
    if len(set(checked)) != len(checked):
        raise UsageError(f"--alpha: a value is repeated in {', '.join(f'{a:g}' for a in checked)}")
    return checked


@dataclass(frozen=True)
class AlphaRule:
    """Tensors whose name matches `pattern` get `alpha` (None: the run's α)."""

    pattern: str
    alpha: float | None
    option: str  # how the user wrote it, for messages and the provenance

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None

    def to_json(self) -> dict[str, object]:
        return {"rule": self.option, "pattern": self.pattern, "alpha": self.alpha}


def _compile(pattern: str, option: str) -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise UsageError(f"{option}: {pattern!r} is not a regular expression ({err})") from err
    return pattern


def parse_rules(
    alpha_for: Sequence[str] = (), include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[AlphaRule]:
    """--alpha-for REGEX=VALUE (in order), then --exclude REGEX (α = 0), then --include REGEX (others α = 0)."""
    rules = []
    for spec in alpha_for:
        pattern, sep, value = spec.rpartition("=")
        if not sep or not pattern:
            raise UsageError(f"--alpha-for {spec!r}: write REGEX=VALUE, for example 'embed|lm_head=0'")
        try:
            alpha = check_alpha(float(value), f"--alpha-for {spec!r}")
        except ValueError as err:
            raise UsageError(f"--alpha-for {spec!r}: {value!r} is not a number") from err
        rules.append(AlphaRule(_compile(pattern, f"--alpha-for {spec!r}"), alpha, f"--alpha-for {spec}"))
    rules += [AlphaRule(_compile(p, f"--exclude {p!r}"), 0.0, f"--exclude {p}") for p in exclude]
    rules += [AlphaRule(_compile(p, f"--include {p!r}"), None, f"--include {p}") for p in include]
    if include:
        rules.append(AlphaRule(".*", 0.0, "not matched by --include"))
    return rules


def alpha_for(name: str, rules: Sequence[AlphaRule], alpha: float) -> float:
    """The α of one tensor: the first matching rule's, else the run's."""
    for rule in rules:
        if rule.matches(name):
            return alpha if rule.alpha is None else rule.alpha
    return alpha


def check_rules_match(rules: Sequence[AlphaRule], names: Iterable[str]) -> None:
    """Every rule the user wrote must match at least one tensor."""
    names = list(names)
    for rule in rules:
        if rule.option.startswith("--") and not any(rule.matches(n) for n in names):
            raise UsageError(f"{rule.option}: matches no tensor of the aligned model; check the expression")
