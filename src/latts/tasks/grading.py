"""Answer extraction and grading: the last ``\\boxed{}``, maths equivalence, multiple-choice letters.

Maths equivalence is math-verify's (``verify(parse(gold), parse(pred))``, gold first: the check is not
symmetric); nothing here re-implements LaTeX equivalence. math-verify's own timeouts use ``signal.alarm``,
which only works in the main thread, so they are switched off everywhere else (a web server grades in worker
threads); there, a size guard on the parsed expressions keeps sympy away from answers such as
``2^{2^{2^{100}}}`` on which ``verify`` would otherwise never return. math-verify and sympy are imported on
first use, so extracting letters or boxes stays cheap.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any

# math-verify warns once, through logging, when its timeouts are off; without a handler of its own that
# warning would reach stderr through logging's last-resort handler and garble the CLI's one-line output.
logging.getLogger("math_verify").addHandler(logging.NullHandler())

_MAIN_THREAD_TIMEOUT_S = 5  # math-verify's per-parse and per-comparison limit where signals work
_MAX_ANSWER_CHARS = 1000  # a final answer longer than this is not worth sympy's time: compared as text
_MAX_NODES = 400  # the parsed-expression size guard (see _tame)
_MAX_DEPTH = 16
_MAX_EXPONENT = 10_000
_MAX_FACTORIAL = 1_000

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
THINK_END = "</think>"  # where a reasoning model (Qwen3, DeepSeek-R1 distills) closes its thinking


def after_thinking(completion: str) -> str:
    """The part of ``completion`` that answers: after the last ``</think>``, or all of it when there is none.

    A reasoning model's thinking tries answers out; only what it says after closing its thinking (by itself
    or forced by budget forcing) is its answer, so every task extracts from this part.
    """
    at = completion.rfind(THINK_END)
    return completion if at < 0 else completion[at + len(THINK_END):]


def _boxes(text: str) -> list[tuple[str, bool]]:
    """Every ``\\boxed``/``\\fbox`` in ``text`` in order, as (content, closed); escaped braces do not nest."""
    found: list[tuple[str, bool]] = []
    for match in _BOX.finditer(text):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth, i = 0, start
            while i < len(text):
                ch = text[i]
                if ch == "\\":
                    i += 2
                    continue
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if i < len(text):
                found.append((text[start + 1 : i], True))
            else:
                found.append((text[start + 1 :], False))
        elif match.group(0)[-1].isspace():
            # "\boxed 5": TeX takes the next token; MATH solutions sometimes write it that way
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                found.append((token.group(0), True))
    return found


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text`` (nested braces kept), or None.

    An unclosed final ``\\boxed{`` is what a forced answer cut by the token budget leaves behind; its first
    line is taken when it is not empty (``...\\boxed{42`` -> ``42``), because a possibly truncated answer is
    still a better vote than none. An empty or unclosed box earlier in the text is skipped in favour of the
    closest complete, non-empty box before it.
    """
    boxes = _boxes(text)
    for index in range(len(boxes) - 1, -1, -1):
        content, closed = boxes[index]
        if not closed:
            if index != len(boxes) - 1:
                continue
            content = content.split("\n", 1)[0].rstrip("$ ")
        content = content.strip()
        if content:
            return content
    return None


_LETTER = r"\(?\**\s*([A-D])\s*\**\)?"
_LETTER_AFTER = r"(?![A-Za-z0-9])"
_ARTICLE_AFTER = re.compile(r"\s+[a-z]")  # "Answer: A simple ..." uses "A" as an article
_LETTER_PATTERNS = [
    # "The answer is (B)", "the correct answer is: **C**", "Final Answer: B", "answer: option D"
    re.compile(
        r"answer\s*(?:is|:)?\s*(?:is\s*)?[:\s]*\**\s*:?\s*(?:option|choice)?\s*" + _LETTER + _LETTER_AFTER,
        re.IGNORECASE,
    ),
    # "The correct option is (C)", "correct choice: D"
    re.compile(r"(?:option|choice)\s*(?:is|:)\s*\**\s*" + _LETTER + _LETTER_AFTER, re.IGNORECASE),
    # "(A) is correct", "Option B is the correct answer", "C is the right choice"
    re.compile(
        r"(?:option\s+|choice\s+)?\(?\b([A-D])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)", re.IGNORECASE
    ),
]
_LONE_LETTER = re.compile(r"^\s*(?:\\text(?:bf)?\{)?\s*\(?\s*([A-D])\s*\)?\s*\}?\s*[.:)]?\s*$")


def extract_letter(text: str) -> str | None:
    """The multiple-choice letter (A-D) a completion settles on, or None when it names none.

    Looks, in order, at the last ``\\boxed{}`` (``\\boxed{D}``, ``\\boxed{\\text{(B)}}``), at the last
    "answer is (B)" / "Answer: C" / "**Final Answer:** B" phrase, at "(A) is correct" phrasings, and at a
    text that is nothing but a letter ("B", "(C)."). Only capital letters count, so articles do not.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        lone = _LONE_LETTER.match(boxed.replace("$", ""))
        if lone:
            return lone.group(1)
    for pattern in _LETTER_PATTERNS:
        hits = [
            m.group(1)
            for m in pattern.finditer(text)
            if m.group(1).isupper() and not (m.group(1) == "A" and _ARTICLE_AFTER.match(text, m.end(1)))
        ]
        if hits:
            return hits[-1]
    lone = _LONE_LETTER.match(text)
    return lone.group(1) if lone else None


_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+")


def as_integer(answer: str) -> int | None:
    """The integer an answer spells (``"025"``, ``"$25$"``, ``"25.0"``, ``"1,000"``), else None.

    Integer-answer tasks (AIME, arith) compare these directly: exact, and far cheaper than sympy.
    """
    s = answer.strip().strip("$").strip()
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s).strip().replace("{,}", ",")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if not _INTEGER.fullmatch(s):
        return None
    return int(s.split(".")[0])


_EQUALS = re.compile(r"(?<![<>!=])=(?!=)")  # "=", not part of "<=", ">=", "!=" or "=="
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def equation_value(answer: str) -> str | None:
    """The number an answer written as an equation ends in (``9 + 2 = 11`` -> ``11``), else None.

    Why: models often box the whole computation, and a person grading reads the right-hand side as the
    answer. Only a right-hand side that is a single number counts (``11``, ``-2``, ``0.5``, ``1,000``,
    returned without thousands separators); ``11 = 9 + 2`` or ``x^2 = 4 + 0`` give None.
    """
    s = answer.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$").strip()
    equals = list(_EQUALS.finditer(s))
    if not equals or not s[: equals[-1].start()].strip(" &"):
        return None
    rhs = s[equals[-1].end() :].strip().rstrip(".").strip().replace("{,}", ",")
    return rhs.replace(",", "") if _PLAIN_NUMBER.fullmatch(rhs) else None


_SPACE = re.compile(r"\s+")
_SPACE_NEAR_SYMBOL = re.compile(r"\s*([^A-Za-z0-9\s\\])\s*")


def normalize_answer(answer: str) -> str:
    """A cheap canonical spelling of an answer, used only to spot answers that are plainly identical.

    Strips ``$`` delimiters, ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac`` and needless spaces; two answers
    with the same normal form are equal without asking sympy (different forms still may be equal).
    """
    s = answer.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$").strip()
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _SPACE.sub(" ", s)
    s = _SPACE_NEAR_SYMBOL.sub(r"\1", s)
    return s.rstrip(".").strip()


def _timeout() -> int | None:
    """math-verify's timeout: signals only work in the main thread, so ``None`` (off) anywhere else."""
    return _MAIN_THREAD_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of a bare answer (wrapped in ``\\boxed{}``: text and units normalise)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    inner = extract_boxed(answer) if "\\boxed" in answer or "\\fbox" in answer else None
    body = normalize_answer(inner if inner is not None else answer)
    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return tuple(parse("\\boxed{" + body + "}", extraction_config=configs, parsing_timeout=_timeout()))


def _tame(parsed: tuple[Any, ...]) -> bool:
    """False when sympy could take practically forever on a parsed answer (towers of powers, huge factorials).

    math-verify's own timeout does not work outside the main thread; this guard is what keeps a grading
    thread from hanging on an answer like ``2^{2^{2^{100}}}``.
    """
    import sympy

    def tame_expr(expr: Any) -> bool:
        """Whether one parsed expression is small and free of huge powers and factorials."""
        if isinstance(expr, sympy.MatrixBase):
            return all(tame_expr(e) for e in expr)
        if not isinstance(expr, sympy.Basic):
            return True
        nodes = 0
        stack = [(expr, 0)]
        while stack:
            node, depth = stack.pop()
            nodes += 1
            if nodes > _MAX_NODES or depth > _MAX_DEPTH:
                return False
            if isinstance(node, sympy.Pow) and node.base.is_number and node.exp.is_number:
                exp = node.exp
                if not (exp.is_Rational and abs(exp) <= _MAX_EXPONENT):
                    return False
            if isinstance(node, sympy.factorial) and node.args[0].is_number:
                arg = node.args[0]
                if not (arg.is_Integer and abs(arg) <= _MAX_FACTORIAL):
                    return False
            stack.extend((arg, depth + 1) for arg in node.args)
        return True

    return all(tame_expr(p) for p in parsed)


@lru_cache(maxsize=16384)
def math_equal(gold: str, pred: str) -> bool:
    """True when ``pred`` is mathematically the same answer as ``gold`` (math-verify; gold first, as it asks).

    Both are bare answers such as ``\\frac12``, ``0.5``, ``$\\dfrac{1}{2}$``, ``[0, 1)``, ``5 cm`` or
    ``\\boxed{...}``; identical normal forms short-circuit sympy, and results are cached, so repeated
    comparisons (voting) are cheap.
    """
    if normalize_answer(gold) == normalize_answer(pred):
        return True
    if not gold.strip() or not pred.strip():
        return False
    if len(gold) > _MAX_ANSWER_CHARS or len(pred) > _MAX_ANSWER_CHARS:
        return False
    gold_parsed, pred_parsed = _parsed(gold), _parsed(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if not (_tame(gold_parsed) and _tame(pred_parsed)):
        return False
    from math_verify import verify

    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_timeout()))
