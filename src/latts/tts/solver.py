"""The controller: answer one question with B voting branches, γ-token speculation and a thinking
budget L, within a wall-clock deadline.

``Solver.solve(question, plan=Plan(...))`` runs a given configuration; ``solve(question,
deadline_s=T)`` must return by T: the engine forces every unfinished branch to answer when the time
left only suffices for that (its cost estimated from the run's own step times), then the answers are
voted. The request also ends early once the leading answer can no longer lose the vote.
"""

from __future__ import annotations

import math
import time

from latts.config import BudgetForcing, Plan, Pruning, SamplingParams, check_deadline, default_plan
from latts.backends.base import Backend
from latts.errors import LattsError
from latts.request import Drafter, GenerateRequest
from latts.tasks import Problem, Task, get_task
from latts.types import Branch, Solution
from latts.tts.voting import Vote, decided, vote

# Share of the deadline kept back for what follows the last decode step (voting, decoding text)
# and for the step-time estimate being wrong; the deadline benchmark measures the overshoot.
DEADLINE_MARGIN = 0.04
DEADLINE_MARGIN_S = 0.05


class Solver:
    """Answers questions of one task (prompt template, answer extraction, equivalence) on one backend:
    the embedded :class:`~latts.engine.engine.Engine` or a remote server
    (:class:`~latts.backends.openai.OpenAIBackend`); see :class:`~latts.backends.base.Backend`."""

    def __init__(self, backend: Backend, task: Task | str = "math500", drafter: Drafter | None = None,
                 draft_engine: str = "auto") -> None:
        self.backend = backend
        self.task = get_task(task) if isinstance(task, str) else task
        self.drafter = drafter  # a caller's own drafter, for every plan that speculates
        self.draft_engine = draft_engine  # what runs a plan's draft model (model:PATH): see latts.engine.loading.choice
        self._drafters: dict[str, Drafter] = {}  # built from plans' spellings, once each

    def drafter_for(self, plan: Plan) -> Drafter | None:
        """The drafter ``plan`` speculates with: None when γ = 0 or on a server (it drafts for itself), the
        drafter given to the constructor if any, else the plan's own (``plan.drafter``), built once by
        :func:`latts.engine.speculation.drafters.make_drafter`. A draft model loads at its first call: call this
        before :meth:`solve` to keep the load out of a deadline."""
        if plan.gamma == 0 or getattr(self.backend, "loaded", None) is None:
            return None
        if self.drafter is not None:
            return self.drafter
        if plan.drafter not in self._drafters:
            from latts.engine.speculation.drafters import make_drafter

            self._drafters[plan.drafter] = make_drafter(plan.drafter, self.backend.loaded, engine=self.draft_engine)
        return self._drafters[plan.drafter]

    def solve(
        self,
        question: str | Problem,
        plan: Plan | None = None,
        deadline_s: float | None = None,
        on_step=None,
    ) -> Solution:
        """Answer ``question`` with ``plan`` (default: :func:`default_plan`), by ``deadline_s`` seconds if given.

        The deadline counts from this call (the model is already loaded). ``on_step(branches)`` is
        called after every decode step (live views, streaming); returning True ends the request (its
        unfinished branches are ``cancelled``).
        """
        t0 = time.monotonic()
        check_deadline(deadline_s)
        problem = question if isinstance(question, Problem) else Problem("question", question, "", {"raw": True})
        if not problem.question.strip():
            raise LattsError("empty question")
        plan = plan or default_plan(deadline_s)
        budget = BudgetForcing(plan.min_think, plan.max_think, answer_prompt=self.task.answer_prompt,
                               answer_tokens=plan.answer_tokens)
        sampling = SamplingParams(plan.temperature, plan.top_p, seed=plan.seed)
        deadline = None
        if deadline_s is not None:
            deadline = t0 + deadline_s * (1 - DEADLINE_MARGIN) - DEADLINE_MARGIN_S
        answers: dict[int, str | None] = {}
        early = [False]

        def watch(branches: list[Branch]) -> bool:
            if on_step is not None and on_step(branches):
                return True  # the caller ended the request (a streaming client went away)
            if not plan.early_stop:
                return False
            for b in branches:
                if b.finish_reason and b.index not in answers:
                    text = self.backend.tokenizer.decode(b.token_ids, skip_special_tokens=True)
                    answers[b.index] = self.task.extract(text) if b.finish_reason != "pruned" else None
            remaining = sum(1 for b in branches if not b.finish_reason)
            done = [b for b in branches if b.index in answers]
            weights = [_weight(b) for b in done] if plan.weighted else None
            # a vote weight never exceeds 1 (exp of a log-probability), so `decided` holds for both kinds
            if remaining and answers and decided(self._vote([answers[b.index] for b in done], weights), remaining):
                early[0] = True
                return True
            return False

        request = GenerateRequest(self.task.prompt(problem), branches=plan.branches, sampling=sampling,
                                  deadline=deadline, gamma=plan.gamma, drafter=self.drafter_for(plan),
                                  budget=budget, logprobs=plan.weighted,
                                  pruning=Pruning(plan.prune) if plan.prune else None,
                                  gamma_policy=plan.gamma_policy)
        gen = self.backend.generate(request, on_step=watch)
        # a pruned branch stopped mid-thought for low confidence: it abstains
        branch_answers = [self.task.extract(b.text) if b.finish_reason != "pruned" else None for b in gen.branches]
        result = self._vote(branch_answers, [_weight(b) for b in gen.branches] if plan.weighted else None)
        return Solution(
            question=problem.question,
            answer=result.answer,
            votes=result.counts,
            abstained=result.abstained,
            branch_answers=branch_answers,
            branches=gen.branches,
            latency_s=time.monotonic() - t0,
            prefill_s=gen.prefill_s,
            tokens=gen.total_tokens,
            plan=plan,
            deadline_s=deadline_s,
            early_stopped=early[0],
            steps=gen.steps,
            spec=gen.spec.to_dict() if gen.spec is not None else None,
            prompt_tokens=gen.prompt_tokens,
            load=gen.load,
        )

    def _vote(self, answers: list[str | None], weights: list[float] | None = None) -> Vote:
        return vote(answers, self.task.same, weights)


def _weight(branch: Branch) -> float:
    """A branch's vote weight: the geometric-mean probability of its sampled tokens (1 if it sampled none)."""
    mean = branch.mean_logprob
    return math.exp(mean) if mean is not None else 1.0
