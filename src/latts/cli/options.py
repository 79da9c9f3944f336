"""What the ``latts`` commands share: their common options, the --backend options as one decorator,
comma-separated number parsing, and the one way a command fails (``error: ...`` on stderr, exit code 2)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Optional, TypeVar

import typer

from latts.cli.console import fail
from latts.errors import LattsError

F = TypeVar("F", bound=Callable[..., Any])

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="bundled model name, HF folder or GGUF file")
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32 or bfloat16")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="what runs the model: auto, torch (latts' own), llamacpp (any GGUF) or hf (transformers' "
                     "own forward, slow); auto picks by architecture and the file's blocks")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t")]
SeedOpt = Annotated[int, typer.Option("--seed")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="dataset file (required for gpqa_diamond)")]
PlansOpt = Annotated[Optional[str], typer.Option("--plans", help="plans file (default: this machine's cache)")]
DrafterOpt = Annotated[str, typer.Option("--drafter", help="ngram, ngram:N, group, group:N (drafts from every branch), or model:PATH")]
TaskOpt = Annotated[str, typer.Option("--task", help="math500, aime24, aime25, gpqa_diamond or arith")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="embedded (latts' engine on this CPU) or openai (a vLLM / SGLang / llama.cpp server; "
                      "--model is then the name the server serves)")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="openai backend: the server's URL, e.g. "
                                                                      "http://127.0.0.1:8000/v1")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="OPENAI_API_KEY", help="openai backend: API key")]
# on `latts serve`, --api-key is the key the server itself requires: the backend's key is spelled apart
BackendApiKeyOpt = Annotated[Optional[str], typer.Option("--backend-api-key", envvar="OPENAI_API_KEY",
                                                         help="openai backend: the remote server's API key")]
TokenizerOpt = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="openai backend: the served model's tokenizer (latts model name, HF folder or GGUF) for "
                        "its chat template; default --model")]
BranchModeOpt = Annotated[str, typer.Option(
    "--branch-mode", help="openai backend: n (one request with n=B), requests (B concurrent requests) or auto")]
ServerGammaOpt = Annotated[int, typer.Option(
    "--server-gamma", help="openai backend: draft tokens per step the server runs (its speculative config)")]
SlotsOpt = Annotated[Optional[int], typer.Option(
    "--slots", help="openai backend: requests the server decodes at once (llama.cpp --parallel)")]


def one_line_errors(command: F) -> F:
    """Turn every :class:`~latts.errors.LattsError` of ``command`` into ``error: ...`` on stderr and exit code 2
    (a problem the user can fix, so no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LattsError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def numbers(text: str, option: str, kind: type = int) -> list:
    """A comma-separated option value as numbers, or a one-line error naming the option."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LattsError(f"{option} must be comma-separated numbers, got '{text}'") from None
    if not values:
        raise LattsError(f"{option} is empty")
    return values


@dataclass(frozen=True)
class Backend:
    """The --backend choice with its remote-server options (None for the embedded engine)."""

    kind: str
    remote: Any = None  # latts.backends.RemoteOptions

    @property
    def server_gamma(self) -> int:
        """γ the remote server runs (0 for the embedded engine, which speculates per plan)."""
        return self.remote.server_gamma if self.remote is not None else 0


_BACKEND_OPTIONS: dict[str, tuple[Any, Any]] = {
    "backend": (BackendOpt, "embedded"), "base_url": (BaseUrlOpt, None), "api_key": (ApiKeyOpt, None),
    "tokenizer": (TokenizerOpt, None), "branch_mode": (BranchModeOpt, "auto"), "server_gamma": (ServerGammaOpt, 0),
    "slots": (SlotsOpt, None),
}


def backend_options(command: F) -> F:
    """Give ``command`` the options --backend, --base-url, --api-key, --tokenizer, --branch-mode,
    --server-gamma and --slots; it receives them, checked, as one ``backend: Backend`` argument."""
    return _with_backend_options(command, _BACKEND_OPTIONS)


def serving_backend_options(command: F) -> F:
    """:func:`backend_options` for a server, whose own --api-key is the key its clients send: the remote
    backend's key is --backend-api-key there."""
    options = {("backend_api_key" if k == "api_key" else k): ((BackendApiKeyOpt, None) if k == "api_key" else v)
               for k, v in _BACKEND_OPTIONS.items()}
    return _with_backend_options(command, options)


def _with_backend_options(command: F, options: dict[str, tuple[Any, Any]]) -> F:
    sig = inspect.signature(command, eval_str=True)  # typer reads a given __signature__ as it stands
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
             for name, (kind, default) in options.items()]
    params = [p for p in sig.parameters.values() if p.name != "backend"] + added

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        opts = {name: kwargs.pop(name) for name in options}
        if "backend_api_key" in opts:
            opts["api_key"] = opts.pop("backend_api_key")
        return command(**kwargs, backend=choose_backend(**opts))

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


def choose_backend(backend: str, base_url: str | None, api_key: str | None, tokenizer: str | None,
                   branch_mode: str, server_gamma: int, slots: int | None) -> Backend:
    """The --backend choice; remote options without --backend openai are a mistake worth naming."""
    from latts.backends import BACKENDS, RemoteOptions

    if backend not in BACKENDS:
        raise LattsError(f"unknown backend '{backend}': use {' or '.join(BACKENDS)}")
    if backend != "openai":
        if base_url or tokenizer or slots or server_gamma or branch_mode != "auto":
            raise LattsError("--base-url, --tokenizer, --branch-mode, --server-gamma and --slots need --backend openai")
        return Backend(backend)
    return Backend(backend, RemoteOptions(base_url, api_key, tokenizer, branch_mode, server_gamma, slots))


def open_announced(backend: Backend | str, model: str, dtype: str, announce: bool = True, engine: str = "auto") -> Any:
    """The embedded engine (``backend="embedded"``, the model on ``engine``) or a remote server, ready and warmed
    up, announced on stderr (see :func:`latts.backends.open_backend`)."""
    from latts.backends import open_backend
    from latts.cli.console import announce as say
    from latts.cli.console import warn_missing_kernels

    kind, remote = (backend, None) if isinstance(backend, str) else (backend.kind, backend.remote)
    opened = open_backend(kind, model, dtype, remote, engine=engine)
    warn_missing_kernels(opened)
    if announce:
        say(opened)
    return opened


def refuse_unrunnable(backend: Backend | str, model: str, engine: str, dtype: str) -> None:
    """Refuse, from the model file's header alone and before torch is imported, a ``--dtype`` that is not one
    or a model that ``--engine`` cannot run in this process, naming the engine that can: the first thing a
    command that loads a model does after its own cheap checks, so that the refusal takes well under a second.
    A server (``--backend openai``) runs its own model, so nothing is checked for it here."""
    from latts.config import check_dtype
    from latts.engine.loading.choice import check_engine, choose_for

    if (backend if isinstance(backend, str) else backend.kind) != "embedded":
        return
    check_dtype(dtype)
    check_engine(engine)
    choose_for(model, engine)
