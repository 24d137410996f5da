"""One error type for everything a user can cause, each kind with its own exit code.

The CLI turns these into one line on stderr and the exit code below; anything else is a bug and
keeps its traceback. The codes are documented in `expo --help`.
"""

from __future__ import annotations

import signal


class ExpoError(Exception):
    """An error the user can fix: printed as one line, no traceback."""

    exit_code = 1


class UsageError(ExpoError):
    """An option value that cannot work (checked beyond what the option parser can)."""

    exit_code = 2


class InputError(ExpoError):
    """An input checkpoint is missing, unreadable, corrupt, hostile or unsupported."""

    exit_code = 3


class MismatchError(ExpoError):
    """The two checkpoints cannot be paired (architecture, tensor names or shapes differ)."""

    exit_code = 4


class OutputError(ExpoError):
    """The output cannot be written (exists, unwritable, inside an input, disk full)."""

    exit_code = 5


class NonFiniteError(ExpoError):
    """The extrapolation produced inf/NaN (for example float16 overflow)."""

    exit_code = 6


class HubError(ExpoError):
    """The Hugging Face Hub refused or failed a request."""

    exit_code = 7


class NotWritten(ExpoError):
    """expo tune finished, but the --output it was asked for is not written: the choice was not confirmed on the
    held-out prompts (or α = 0 was chosen, or its answers were cut much more often); the results are still shown."""

    exit_code = 8


class Interrupted(ExpoError):
    """The run was stopped by a signal; the partial output has been removed."""

    def __init__(self, signum: int, after: str = "the partial output was removed") -> None:
        self.exit_code = 128 + signum
        self.signum, self.after = signum, after
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {after}")

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return Interrupted, (self.signum, self.after)  # raised again in the process that started a worker


EXIT_CODES = {
    0: "success",
    1: "verify found differences, or an unexpected error",
    2: "bad usage",
    3: "unreadable, corrupt or unsupported input",
    4: "the two checkpoints do not match (or are the same, or look swapped)",
    5: "output cannot be written (exists, no space, read-only, inside an input), or a job array's --finish before "
    "every part is done",
    6: "non-finite result",
    7: "Hub error (refused, still failing past the retry bounds or EXPO_RETRY_BUDGET, or bytes not matching the "
    "Hub's sha256: nothing committed)",
    8: "expo tune wrote no --output: not confirmed on held-out prompts, α = 0 chosen, or the chosen α's answers cut "
    "far more often (results still on stdout; --force writes it)",
    130: "interrupted (SIGINT/SIGTERM), partial output removed",
}


def exit_codes_help(codes: tuple[int, ...] = tuple(EXIT_CODES), one: str | None = None) -> str:
    """The exit codes a command can end with, in words (`one`: what 1 means for it); 130 stands for 130/143."""
    meanings = {**EXIT_CODES, **({1: one} if one else {})}
    return "Exit codes: " + "; ".join(f"{'130/143' if code == 130 else code} {meanings[code]}" for code in codes) + "."


EXIT_CODES_HELP = exit_codes_help()


def first_line(err: BaseException) -> str:
    """An exception's first line (or its type's name when it has no text): enough for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
