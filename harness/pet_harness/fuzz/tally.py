"""What a fuzz run saw, counted, and written as ``summary.json`` and ``summary.md``."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Disagreement:
    part: str  # admission | convergence | webhook
    what: str  # one line: model said X, the cluster did Y
    example: str  # the (shrunk, when Hypothesis shrank it) example

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Tally:
    started: float = dataclasses.field(default_factory=time.monotonic)
    examples: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rejections: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    status_codes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    phases: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    server_errors: int = 0
    no_answer: int = 0
    steps: int = 0
    restarts: int = 0
    disagreements: list[Disagreement] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    merged_seconds: float | None = None  # a summary of parts: the sum of their times

    def disagree(self, part: str, what: str, example: str) -> None:
        # Hypothesis replays a failing example while shrinking: keep each distinct finding once
        if not any(d.part == part and d.what == what for d in self.disagreements):
            self.disagreements.append(Disagreement(part, what, example[:2000]))

    def as_dict(self) -> dict[str, Any]:
        seconds = self.merged_seconds if self.merged_seconds is not None else time.monotonic() - self.started
        seconds = max(seconds, 1e-9)
        total = sum(self.examples.values())
        return {
            "seconds": round(seconds, 1),
            "examples": dict(sorted(self.examples.items())),
            "examples_total": total,
            "examples_per_second": round(total / seconds, 1),
            "rejections_by_rule": dict(self.rejections.most_common()),
            "status_codes": dict(sorted(self.status_codes.items())),
            "admitted_by_phase": dict(sorted(self.phases.items())),
            "server_errors_5xx": self.server_errors,
            "no_answer": self.no_answer,
            "state_machine_steps": self.steps,
            "operator_restarts": self.restarts,
            "disagreements": [d.as_dict() for d in self.disagreements],
            "notes": self.notes,
        }

    def merge(self, other: dict[str, Any]) -> None:
        """Add a part's summary (a dict of :meth:`as_dict`) to this one."""
        self.merged_seconds = (self.merged_seconds or 0.0) + float(other.get("seconds", 0.0))
        self.examples.update(other.get("examples", {}))
        self.rejections.update(other.get("rejections_by_rule", {}))
        self.status_codes.update(other.get("status_codes", {}))
        self.phases.update(other.get("admitted_by_phase", {}))
        self.server_errors += other.get("server_errors_5xx", 0)
        self.no_answer += other.get("no_answer", 0)
        self.steps += other.get("state_machine_steps", 0)
        self.restarts += other.get("operator_restarts", 0)
        for d in other.get("disagreements", []):
            self.disagreements.append(Disagreement(**d))
        self.notes.extend(other.get("notes", []))


def write(tally: Tally, folder: Path, title: str, command: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = tally.as_dict()
    data["command"] = command
    (folder / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"- examples: {data['examples_total']} in {data['seconds']} s ({data['examples_per_second']}/s): "
             + ", ".join(f"{k} {v}" for k, v in data["examples"].items()),
             f"- state-machine steps: {data['state_machine_steps']}, operator restarts: {data['operator_restarts']}",
             f"- 5xx answers: {data['server_errors_5xx']}, requests without an answer: {data['no_answer']}",
             f"- disagreements: {len(data['disagreements'])}", ""]
    if data["rejections_by_rule"]:
        lines += ["| rejected by rule | count |", "| --- | ---: |"]
        lines += [f"| `{k}` | {v} |" for k, v in data["rejections_by_rule"].items()]
        lines.append("")
    if data["admitted_by_phase"]:
        lines += ["| pets checked, by the phase reached (real samples, state-machine checks) | count |",
                  "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in data["admitted_by_phase"].items()]
        lines.append("")
    if data["status_codes"]:
        lines += ["Answers by HTTP status: " + ", ".join(f"{k}: {v}" for k, v in data["status_codes"].items()), ""]
    for d in data["disagreements"]:
        lines += [f"## Disagreement ({d['part']})", "", d["what"], "", "```", d["example"], "```", ""]
    for note in data["notes"]:
        lines.append(f"- {note}")
    (folder / "summary.md").write_text("\n".join(lines).rstrip() + "\n")
    return folder
