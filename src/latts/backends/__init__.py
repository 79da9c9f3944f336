"""Backends: who decodes. ``embedded`` is latts' own engine on this machine's CPU; ``openai`` is any
OpenAI-compatible server (vLLM, SGLang, llama.cpp) that latts drives over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latts.errors import LattsError
from latts.provenance import MeasuredWith

BACKENDS = ("embedded", "openai")


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """Where and how to reach an OpenAI-compatible server (see :class:`~latts.backends.openai.OpenAIBackend`)."""

    base_url: str | None = None
    api_key: str | None = None
    tokenizer: str | None = None
    branch_mode: str = "auto"
    server_gamma: int = 0
    slots: int | None = None
    timeout_s: float = 60.0


@dataclass(slots=True)
class Opened:
    """A ready backend: its name for plans and records, the backend itself, and the loaded model if embedded."""

    name: str
    backend: Any
    loaded: Any = None  # latts.engine.loading.loader.LoadedModel for the embedded engine

    @property
    def remote(self) -> bool:
        """True when a server decodes."""
        return self.loaded is None

    def measured_with(self) -> MeasuredWith:
        """What a measurement on this backend records, and what a cached profile or plan must match."""
        return self.backend.measured_with() if self.loaded is None else self.loaded.measured_with()


def open_backend(kind: str, model: str, dtype: str = "auto", remote: RemoteOptions | None = None,
                 engine: str = "auto") -> Opened:
    """Load the embedded engine or connect to a server, then warm it up (never inside a deadline).

    ``engine`` (embedded only): which engine runs the model, ``auto``, ``torch``, ``llamacpp`` or ``hf`` (see
    :mod:`latts.engine.loading.choice`)."""
    from latts.engine.loading.choice import check_engine, choose_for

    if kind not in BACKENDS:
        raise LattsError(f"unknown backend '{kind}': use {' or '.join(BACKENDS)}")
    check_engine(engine)
    if kind == "openai" and engine != "auto":
        raise LattsError("--engine chooses what runs the model in this process; with --backend openai the server "
                         "runs it")
    if kind == "openai":
        from latts.backends.openai import OpenAIBackend

        r = remote or RemoteOptions()
        if not r.base_url:
            raise LattsError("the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        backend = OpenAIBackend(r.base_url, model, api_key=r.api_key, tokenizer=r.tokenizer,
                                branch_mode=r.branch_mode, server_gamma=r.server_gamma, slots=r.slots,
                                timeout_s=r.timeout_s)
        backend.warmup()
        return Opened(model, backend)
    choose_for(model, engine)  # refuses, before torch is imported, a model the engine cannot run
    from latts.engine.engine import Engine
    from latts.engine.loading.loader import load

    loaded = load(model, dtype, engine=engine)
    embedded = Engine(loaded)
    embedded.warmup()
    return Opened(loaded.name, embedded, loaded)
