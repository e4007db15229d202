"""``diffusionsat`` command line: one thin module per subcommand (parse → library → print).

Exit codes (SPEC §6): 0 ok, 2 bad input (one-line message, no traceback), 1 internal error.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from .. import __version__

BAD_INPUT = 2
INTERNAL_ERROR = 1

#: OS errors that mean "the user's disk or folder cannot take it" (read-only, no permission, full).
USER_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                         errno.EISDIR, errno.ENAMETOOLONG})

#: Errors that mean "the user gave something wrong": reported in one line, exit code 2.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class InputError(click.ClickException):
    """Bad input detected by a subcommand; printed as one line with exit code 2."""

    exit_code = BAD_INPUT

    def show(self, file=None) -> None:  # one line, no usage block
        click.echo(f"error: {self.format_message()}", err=True, file=file)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="diffusionsat")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """DiffusionSat: generate, enhance and fill satellite imagery with text + metadata diffusion."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def require_extra(extra: str) -> None:
    """Refuse (one line, exit 2) when the optional ``extra`` a command needs is not installed."""
    from ..extras import install_hint, missing_modules

    missing = missing_modules(extra)
    if missing:
        command = click.get_current_context(silent=True)
        name = f"`diffusionsat {command.info_name}`" if command is not None else "this command"
        raise InputError(f"{name} {install_hint(extra, missing[0])}")


def _register() -> None:
    """Add every subcommand; each module imports only click at the top, so this stays instant."""
    from . import (  # noqa: F401
        conditional,
        convert,
        downstream,
        evaluate,
        generate,
        info,
        prepare_data,
        serve,
        synthesize,
        train,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into the documented exit codes."""
    _register()
    debug = os.environ.get("DIFFUSIONSAT_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="diffusionsat", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return INTERNAL_ERROR
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except INPUT_ERRORS as err:
        if debug:
            raise
        click.echo(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", err=True)
        return BAD_INPUT
    except OSError as err:
        if debug or err.errno not in USER_ERRNOS:
            if debug:
                raise
            click.echo(f"internal error: {type(err).__name__}: {err} (set DIFFUSIONSAT_DEBUG=1 for a traceback)", err=True)
            return INTERNAL_ERROR
        where = f"{err.filename}: " if err.filename else ""
        click.echo(f"error: {where}{err.strerror or err}", err=True)
        return BAD_INPUT
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as err:  # noqa: BLE001 - last-resort handler of the CLI
        from ..extras import extra_for_module, install_hint

        extra = extra_for_module(err.name) if isinstance(err, ModuleNotFoundError) else None
        if extra is not None:  # a module of an optional extra: what to install, not a traceback
            click.echo(f"error: {install_hint(extra, err.name)}", err=True)
            return BAD_INPUT
        if debug:
            raise
        click.echo(f"internal error: {type(err).__name__}: {err} (set DIFFUSIONSAT_DEBUG=1 for a traceback)", err=True)
        return INTERNAL_ERROR
    return 0


def run() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
