"""Safe output writing: never overwrite unless asked, never leave a half-written file (SPEC §5)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """An output file already exists and ``overwrite`` was not given."""


def check_writable(paths: Iterable[str | os.PathLike], overwrite: bool = False) -> list[Path]:
    """Check *all* outputs up front so that a run either writes everything or nothing.

    Raises :class:`OutputExistsError` for an existing file (unless ``overwrite``) and
    :class:`PermissionError` / :class:`NotADirectoryError` for a folder that cannot take it.
    """
    checked = []
    for raw in paths:
        path = Path(raw)
        if path.exists() and path.is_dir():
            raise IsADirectoryError(f"output {str(path)!r} is a directory, expected a file name")
        if path.exists() and not overwrite:
            raise OutputExistsError(f"output {str(path)!r} already exists (use --overwrite to replace it)")
        parent = path.parent if str(path.parent) else Path(".")
        ancestor = parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise NotADirectoryError(f"cannot write {str(path)!r}: {str(ancestor)!r} is not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write {str(path)!r}: folder {str(ancestor)!r} is not writable")
        checked.append(path)
    return checked


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    check_writable([target], overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise survive the rename
    try:
        yield tmp_path
        if not overwrite and target.exists():
            raise OutputExistsError(f"output {str(target)!r} appeared while writing; not replaced")
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; swap it into place only on success.

    Used for checkpoints and model folders: a crash leaves the previous folder intact.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output folder {str(target)!r} already exists (use --overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
