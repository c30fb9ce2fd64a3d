"""The `hashsearch` command line: one command per stage, plus `demo` that chains them.

Every command prints one clean line per problem: a warning (a file skipped, ...) as
``warning: ...`` on stderr, without Python's source line; a user error as ``error: ...`` on stderr
with exit code 2; an interruption says that the features computed so far are kept. A traceback
is shown only for an unexpected internal error with ``HASHSEARCH_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer
import typer.core
from typer.exceptions import Abort, Exit, TyperException

from hashsearch.cli import bench, commands, duplicates, serve, train


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the CLI: one line, no source file or line, names made printable."""
    from hashsearch.data.sources import printable

    text = printable(str(message))
    try:
        from tqdm import tqdm

        tqdm.write(f"warning: {text}", file=sys.stderr)  # between progress bars, not through them
    except Exception:  # pragma: no cover - tqdm is a dependency
        typer.echo(f"warning: {text}", err=True)


def _error(text: str) -> None:
    from hashsearch.data.sources import printable

    typer.secho(f"error: {printable(text)}", fg="red", err=True)


def _usage_text(e, bad_parameter: type) -> str:
    """A usage error's line: a `BadParameter` whose message is already a sentence of ours (raised
    without a parameter, or starting with the option's name) without click's "Invalid value:" prefix;
    click's own messages ("'x' is not a valid integer") keep theirs, which names the option."""
    if isinstance(e, bad_parameter):
        opts = list(getattr(e.param, "opts", None) or ())
        if (e.param is None and e.param_hint is None) or any(e.message.startswith(o) for o in opts):
            return e.message
    return e.format_message()


class _Commands(typer.core.TyperGroup):
    """Runs every command with the CLI's warning format and error handling (see the module docstring)."""

    def main(self, *args, **kwargs):
        """Click's own errors (a bad option value, a missing argument) as one ``error:`` line too."""
        # Click's exception classes, whether typer ships its own copy of click or uses click's.
        click_errors = sys.modules[typer.BadParameter.__module__]
        kwargs.pop("standalone_mode", None)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "hashsearch"
            _error(f"{_usage_text(e, click_errors.BadParameter)} (see `{where} --help`)")
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            _error(e.format_message())
            sys.exit(e.exit_code)
        except Abort:
            _error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        from hashsearch.collection import CollectionError

        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            from hashsearch.data.sources import BadImageWarning

            warnings.simplefilter("always", BadImageWarning)  # one line per file, in every run
            try:
                return super().invoke(ctx)
            except (TyperException, Exit, Abort):  # usage errors and exits: typer prints them
                raise
            except KeyboardInterrupt as e:
                # A command with more to say (train: the checkpointed epoch) raises a KeyboardInterrupt with a message.
                _error(
                    str(e)
                    or "interrupted; the features computed so far are in the feature cache, and running the "
                    "command again computes only the rest"
                )
                raise Exit(130) from None
            except BrokenPipeError:
                # The reader stopped reading (`hashsearch list | head -1`): nothing to report. Standard output
                # goes to devnull so that the interpreter's last flush does not fail again (Python's signal docs).
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(1) from None
            except (ValueError, OSError, CollectionError) as e:
                if os.environ.get("HASHSEARCH_DEBUG"):
                    raise
                text = str(e)
                if isinstance(e, OSError) and e.filename is not None and e.strerror:
                    text = f"{e.filename}: {e.strerror}"
                _error(text)
                raise Exit(2) from None
            except Exception as e:  # an internal error: one line, the traceback on request
                if os.environ.get("HASHSEARCH_DEBUG"):
                    raise
                _error(
                    f"unexpected {type(e).__name__}: {e} (a bug in hashsearch; run again with HASHSEARCH_DEBUG=1 "
                    "for the traceback, and please report it)"
                )
                raise Exit(1) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    help="Content-based image retrieval with learned binary hash codes.",
    pretty_exceptions_enable=False,
    # Plain usage errors: rich's boxes wrap a long message (a path) over several lines.
    rich_markup_mode=None,
)
for fn in commands.ALL:
    app.command()(fn)
app.command()(serve.serve)
app.command()(bench.bench)
app.command()(duplicates.duplicates)
app.command()(train.train)


def main() -> None:
    """Console entry point: user errors print one clear line and exit 2, never a traceback."""
    app()
