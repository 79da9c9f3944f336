"""The ``latts`` command line: this module only creates the Typer app and registers the commands.

One module per group of commands (:mod:`~latts.cli.run`, :mod:`~latts.cli.evaluate`, :mod:`~latts.cli.plan`,
:mod:`~latts.cli.serve`, :mod:`~latts.cli.grade`), their shared options in :mod:`~latts.cli.options`. Each
command parses its options, calls the library and prints. Heavy imports (torch, transformers) happen inside
the commands so that ``latts --help`` is instant. Every problem the user can fix ends as one line
``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import typer

from latts.cli import evaluate, grade, plan, run, serve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Latency-aware test-time scaling for LLMs.")

# in this order in ``latts --help``
app.command()(run.generate)
app.command()(run.models)
app.command()(grade.grade)
app.command()(run.solve)
app.command(name="eval")(evaluate.evaluate_cmd)
app.command()(plan.profile)
app.command()(plan.optimize)
app.command()(evaluate.report)
app.command()(run.demo)
app.command()(serve.serve)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
