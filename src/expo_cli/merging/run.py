"""A prepared run: what `planning.prepare` decided, ready to execute, and the description `--dry-run` prints.

`PreparedRun` holds the opened sources for execution and serialises (`to_json`) to what a run will do: inputs,
pairing, α per tensor and target, shards (the same in every process that prepares it: job-array parts compare
it). `Plan` is its description for a person or a script (`expo merge --dry-run [--json]`, `expo_cli.plan`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..alpha import AlphaRule, alpha_for, formula
from ..constants import CHUNK_ELEMENTS
from ..core.pairing import Pairing
from ..core.sinks import BUFFERS
from ..core.sources import itemsize
from ..fsutil import free_space, human_bytes
from ..trajectory import Milestone, step_for_alpha
from . import sidefiles
from .card import AlignedCard, Source
from .weights import WeightSet

if TYPE_CHECKING:
    from ..inputs.lowrank import LowRankUpdate


BASE_MEMORY = 256 * 2**20  # Python, torch and expo themselves, measured at about 200 MiB of anonymous memory


@dataclass
class Plan:
    """Everything a merge would do, decided from headers alone: what `--dry-run` prints."""

    outputs: dict[float, Path]
    tensors: int
    extrapolated: int
    bytes_read: int
    bytes_written: int
    shards: list[tuple[str, int]]
    disk_needed: int
    disk_free: int
    peak_memory: int
    alpha_groups: dict[float, dict[str, int]]  # run α -> {"α=<v>": tensor count}
    rules: list[dict[str, Any]]
    notes: list[str]
    leftovers: list[str]
    copied_files: list[str] | None  # None: Hub inputs in a dry run, sorted once downloaded
    skipped_files: dict[str, str] | None
    model_names: dict[float, str]
    streamed: bool = False  # --stream: disk_needed is the scratch folder's peak

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outputs"] = {f"{a:g}": str(p) for a, p in self.outputs.items()}
        data["alpha_groups"] = {f"{a:g}": groups for a, groups in self.alpha_groups.items()}
        data["shards"] = [{"file": name, "bytes": size} for name, size in self.shards]
        data["model_names"] = {f"{a:g}": name for a, name in self.model_names.items()}
        return data

    def describe(self) -> list[str]:
        lines = [f"Outputs: {', '.join(f'{p} (α={a:g})' for a, p in self.outputs.items())}"]
        kept = self.tensors - self.extrapolated
        lines.append(
            f"Tensors: {self.tensors} ({self.extrapolated} extrapolated"
            + (f", {kept} copied from aligned)" if kept else ")")
        )
        lines.append(f"Read: {human_bytes(self.bytes_read)} (each input byte once)")
        lines.append(f"Write: {human_bytes(self.bytes_written)} per output in {len(self.shards)} shard(s):")
        lines += [f"  {name}  {human_bytes(size)}" for name, size in self.shards]
        where = " in the scratch folder at most (--stream: the shard being written and the one uploading)"
        lines.append(
            f"Disk: {human_bytes(self.disk_needed)} needed{where if self.streamed else ''}, "
            f"{human_bytes(self.disk_free)} free"
        )
        lines.append(f"Peak memory (estimate, excluding the page cache): {human_bytes(self.peak_memory)}")
        for alpha, groups in self.alpha_groups.items():
            counts = ", ".join(f"{n} tensors at {g}" for g, n in groups.items())
            lines.append(f"α per tensor at --alpha {alpha:g}: {counts}")
        lines += [f"Rule {r['rule']}: {r['tensors']} tensor(s)" for r in self.rules]
        lines.append(f"Model name (card): {', '.join(self.model_names.values())}")
        if self.copied_files is None:
            lines.append("Side files: chosen by the side-file policy once the Hub inputs are downloaded")
        else:
            lines.append(f"Copied from the aligned folder: {', '.join(self.copied_files) or 'nothing'}")
        lines += [f"Not copied: {path} ({reason})" for path, reason in (self.skipped_files or {}).items()]
        lines += [f"Note: {n}" for n in self.notes]
        lines += [f"Leftover from an earlier run (a real run removes it): {p}" for p in self.leftovers]
        return lines


@dataclass
class PreparedRun:
    """A validated run, ready to execute: what `prepare` decided, with the sources it opened."""

    weights: list[WeightSet]  # the HF shards first
    targets: dict[float, Path]
    rules: list[AlphaRule]
    dtype: str | None
    device: Any
    disk_needed: int
    leftovers: list[Path]
    sources: tuple[Source, Source]  # sft, aligned
    side_files: sidefiles.SideFiles | None  # None: header-only Hub inputs (a dry run)
    card: AlignedCard
    model_names: dict[float, str]
    streamed: bool = False
    side_folder: Path | None = None  # where the side files come from (with --stream: a download of just those)
    tuning: dict[str, Any] | None = None  # how expo tune chose α
    adapter_config: dict[str, Any] | None = None  # --as-adapter: the output is a PEFT adapter with this config
    streams: int = 1  # shards written at once (execution.write_shards)
    milestones: list[Milestone] | None = None  # --trajectory: its checkpoints
    checkpoint_folders: list[Path] | None = None  # --trajectory: where each checkpoint was read from
    low_rank: LowRankUpdate | None = None  # --delta-rank: the source that low-ranks the update (and its energies)

    @property
    def bytes_read(self) -> int:
        """Input bytes the run reads: both inputs, or every checkpoint of a trajectory of more than two."""
        if self.milestones is not None and len(self.milestones) > 2:
            return len(self.milestones) * sum(t.aligned.nbytes for w in self.weights for t in w.pairing.tensors)
        return sum(w.pairing.bytes_read for w in self.weights)

    def formula(self, alpha: float) -> str:
        """What an output is, with the numbers filled in."""
        said = formula(alpha)
        if self.milestones is not None:
            steps = [m.step for m in self.milestones]
            said = (
                f"θ = the least-squares line through the {len(steps)} checkpoints at step "
                f"{step_for_alpha(steps, alpha):g}, i.e. between its values at steps {steps[0]:g} (θ_sft) and "
                f"{steps[-1]:g} (θ_aligned): {said}"
            )
        if self.low_rank is not None:
            said += f", each matrix's θ_aligned − θ_sft replaced by its best rank-{self.low_rank.rank} approximation"
        return said

    def refinements(self, alpha: float, energies: bool = True) -> dict[str, Any]:
        """What --trajectory and --delta-rank made of this output, for --json and (without the energies this
        process measured: a job-array part sees its own shards only) the provenance."""
        found: dict[str, Any] = {}
        if self.milestones is not None:
            steps = [m.step for m in self.milestones]
            found["trajectory"] = {
                "checkpoints": [{"step": m.step, "checkpoint": _public(m.checkpoint)} for m in self.milestones],
                "to_step": step_for_alpha(steps, alpha),
            }
        if self.low_rank is not None:
            energy = self.low_rank.energy
            found["delta_rank"] = {"rank": self.low_rank.rank, "matrices": len(self.low_rank.pairs)}
            if energies:
                found["delta_rank"]["energy_kept"] = {name: round(share, 6) for name, share in sorted(energy.items())}
        return found

    @property
    def main(self) -> WeightSet:
        return self.weights[0]

    def alphas(self, run_alpha: float, pairing: Pairing) -> dict[str, float]:
        return {t.name: alpha_for(t.name, self.rules, run_alpha) for t in pairing.tensors}

    def to_json(self) -> dict[str, Any]:
        """What the run will do, decided from headers alone and the same in every process that plans it:
        inputs, pairing, α per tensor and target, shards. No local path: outputs are named by folder name."""
        return {
            "inputs": {"sft": self.sources[0].to_json(), "aligned": self.sources[1].to_json()},
            "trajectory": [[m.step, _public(m.checkpoint)] for m in self.milestones or ()],
            "delta_rank": self.low_rank.rank if self.low_rank is not None else None,
            "targets": {
                f"{a:g}": {"output": p.name, "model_name": self.model_names[a]} for a, p in self.targets.items()
            },
            "dtype": self.dtype,
            "rules": [r.to_json() for r in self.rules],
            "weights": [
                {
                    "index": w.index_name,
                    "tensors": [
                        {
                            "name": t.name,
                            "sft": t.sft.name if t.sft else None,
                            "out_dtype": t.out_dtype,
                            "shape": list(t.shape),
                            "shared": t.shared,
                            "alpha": {f"{a:g}": alpha_for(t.name, self.rules, a) for a in self.targets},
                        }
                        for t in w.pairing.tensors
                    ],
                    "shards": [
                        {"file": s.filename, "bytes": s.size, "tensors": [t.name for t in s.tensors]} for s in w.shards
                    ],
                }
                for w in self.weights
            ],
        }

    def describe(self) -> Plan:
        groups = {}
        for run_alpha in self.targets:
            counts: dict[str, int] = {}
            for t in self.main.pairing.tensors:
                key = f"α={alpha_for(t.name, self.rules, run_alpha):g}" if t.sft is not None else "copied"
                counts[key] = counts.get(key, 0) + 1
            groups[run_alpha] = counts
        names = [t.name for t in self.main.pairing.tensors]
        rules = [{**r.to_json(), "tensors": sum(map(r.matches, names))} for r in self.rules]
        tensors = [t for w in self.weights for t in w.pairing.tensors]
        widest = max((itemsize(t.out_dtype) for t in tensors), default=1)
        buffers = self.streams * (BUFFERS * widest + 2 * 8) * CHUNK_ELEMENTS  # pools + widened scratch, at most
        wide = 8 if any(t.aligned.dtype == "F64" for t in tensors) else 4
        if self.milestones is not None and len(self.milestones) > 2:  # each checkpoint's block, both ends, scratch
            buffers += self.streams * (len(self.milestones) + 4) * CHUNK_ELEMENTS * wide
        if self.low_rank is not None:  # one matrix at a time: the SFT matrix, Δ, the SVD, the result
            largest = max((t.numel for t in self.low_rank.pairs.values()), default=0)
            buffers += self.streams * 5 * largest * wide
        return Plan(
            outputs=dict(self.targets),
            tensors=len(tensors),
            extrapolated=sum(w.pairing.extrapolated for w in self.weights),
            bytes_read=self.bytes_read,
            bytes_written=sum(w.bytes_written for w in self.weights),
            shards=[(s.filename, s.size) for w in self.weights for s in w.shards],
            disk_needed=self.disk_needed,
            disk_free=free_space(next(iter(self.targets.values()))),
            peak_memory=BASE_MEMORY + buffers,
            alpha_groups=groups,
            rules=rules,
            notes=[n for w in self.weights for n in w.pairing.notes],
            leftovers=[str(p) for p in self.leftovers],
            copied_files=self.side_files.copied if self.side_files else None,
            skipped_files=self.side_files.listing() if self.side_files else None,
            model_names=self.model_names,
            streamed=self.streamed,
        )


def _public(checkpoint: str) -> str:
    """A checkpoint as the provenance may name it: a Hub id as given, a local folder by its name only."""
    path = Path(checkpoint)
    return path.name if path.exists() else checkpoint
