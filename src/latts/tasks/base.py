"""What every benchmark shares: Problem, the Task interface, a maths base class, a JSONL reader."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from latts.config import ANSWER_PROMPT
from latts.errors import LattsError
from latts.tasks.grading import after_thinking, equation_value, extract_boxed, math_equal

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    """One benchmark question: the text the model sees, the gold answer and free-form metadata."""

    id: str
    question: str  # for gpqa: the question followed by the lettered, shuffled choices
    gold: str  # for gpqa: the correct letter after the seeded shuffle
    meta: dict = field(default_factory=dict)  # e.g. level, subject, choices

    def sampling_seed(self, seed: int) -> int:
        """The sampler's seed for this problem under evaluation seed ``seed``.

        Distinct per problem: with one seed for every problem, all problems draw the same uniform
        numbers, so their runs' correctness is correlated and a one-seed run (like the accuracy
        surface's wide run) can be lucky or unlucky on every problem at once, far outside a bootstrap
        interval that treats problems as independent. Stable across processes (not Python's ``hash``).
        """
        digest = hashlib.blake2b(f"{self.id}\0{seed}".encode(), digest_size=8).digest()
        # 31 bits: a non-negative int32, which every server's seed field takes (llama.cpp's is 32-bit)
        return int.from_bytes(digest, "little") >> 33


@runtime_checkable
class Task(Protocol):
    """A benchmark: how to load its problems, prompt for them, find an answer in a completion and grade it."""

    name: str
    answer_prompt: str

    def load(self, limit: int | None = None, data: Path | None = None, seed: int = 0) -> list[Problem]:
        """The problems in a fixed order; ``data`` replaces the shipped file; ``seed`` drives any shuffle."""
        ...

    def prompt(self, problem: Problem) -> str:
        """The user message for ``problem`` (the chat template is applied elsewhere)."""
        ...

    def extract(self, completion: str) -> str | None:
        """The answer a completion gives, or None when it gives none (an abstention)."""
        ...

    def grade(self, gold: str, pred: str | None) -> bool:
        """True when the extracted answer ``pred`` is right; an abstention is wrong."""
        ...

    def same(self, a: str, b: str) -> bool:
        """True when two extracted answers are the same answer (for voting)."""
        ...


_ANSWER_PHRASE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(\$[^$\n]+\$|\\\([^\n]+?\\\)|[^\n]+?)\s*(?:\.\s*)?$",
    re.IGNORECASE | re.MULTILINE,
)


class MathTask:
    """Shared behaviour of free-form maths benchmarks: a ``\\boxed{}`` answer checked with math-verify.

    Subclasses set ``name`` and ``filename`` (a JSON Lines file in ``latts.data``) and may override
    ``_problem`` to turn one JSON record into a Problem.
    """

    name: str = ""
    filename: str = ""
    answer_prompt: str = ANSWER_PROMPT

    def load(self, limit: int | None = None, data: Path | None = None, seed: int = 0) -> list[Problem]:
        """The problems of the shipped file (or of ``data``), first ``limit`` of them; ``seed`` is unused."""
        check_limit(limit)
        source = Path(data) if data is not None else resources.files("latts.data") / self.filename
        problems = []
        for lineno, record in read_jsonl(source):
            if limit is not None and len(problems) >= limit:
                break
            problems.append(self._problem(record, source, lineno))
        return problems

    def _problem(self, record: dict[str, Any], source: Any, lineno: int) -> Problem:
        """One JSON record as a Problem (fields ``problem``, ``answer`` and optionally ``id``)."""
        question = require(record, "problem", str, source, lineno)
        answer = require(record, "answer", (str, int), source, lineno)
        pid = str(record.get("id", f"{self.name}-{lineno}"))
        return Problem(pid, question, str(answer), {})

    def prompt(self, problem: Problem) -> str:
        """The problem followed by the step-by-step, answer-in-``\\boxed{}`` instruction."""
        return f"{problem.question}\n\n{BOXED_INSTRUCTION}"

    def extract(self, completion: str) -> str | None:
        """The last ``\\boxed{}`` content, else the last "the answer is ..." phrase, else None (after the
        thinking, :func:`~latts.tasks.grading.after_thinking`)."""
        completion = after_thinking(completion)
        boxed = extract_boxed(completion)
        if boxed is not None:
            return boxed
        hits = _ANSWER_PHRASE.findall(completion)
        if not hits:
            return None
        return hits[-1].strip().strip("$").strip() or None

    def grade(self, gold: str, pred: str | None) -> bool:
        """math-verify equivalence, gold first; None (no answer) is wrong.

        A prediction written as an equation ending in a single number (``999 + 1 = 1,000``) is also
        right when that number is (see :func:`~latts.tasks.grading.equation_value`): math-verify
        misses some of these.
        """
        if pred is None:
            return False
        value = equation_value(pred)
        return math_equal(gold, pred) or (value is not None and math_equal(gold, value))

    def same(self, a: str, b: str) -> bool:
        """math-verify equivalence with ``a`` (the class representative) in the gold position."""
        return math_equal(a, b)


def check_limit(limit: int | None) -> None:
    """Reject a negative problem limit (0 is allowed and loads nothing)."""
    if limit is not None and limit < 0:
        raise LattsError(f"limit must be >= 0, got {limit}")


def read_text(source: Any) -> str:
    """The UTF-8 text of a file or package resource, or a LattsError naming the path."""
    try:
        return source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LattsError(f"cannot read {source}: {reason}") from None


def read_jsonl(source: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file; bad lines name file and line."""
    for lineno, line in enumerate(read_text(source).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LattsError(f"{source}:{lineno}: bad JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise LattsError(f"{source}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], source: Any, lineno: int) -> Any:
    """``record[key]``, or a LattsError naming file, line and field if it is missing or mistyped."""
    if key not in record:
        raise LattsError(f"{source}:{lineno}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LattsError(f"{source}:{lineno}: field '{key}' has the wrong type ({type(value).__name__})")
    return value
