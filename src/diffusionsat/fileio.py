"""Safe output writing: never overwrite unless asked, never leave a half-written file (SPEC §5)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


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
        if path.exists() and not path.is_file():
            raise ValueError(f"output {str(path)!r} is not a regular file (a device or pipe); give a file name")
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
def atomic_files(paths: Iterable[str | os.PathLike], overwrite: bool = False) -> Iterator[dict[Path, Path]]:
    """Yield ``{target: temporary path beside it}``; rename them all onto their targets only on success.

    The outputs of one call appear together or not at all: if writing any of them fails (a full
    disk, a crash), no final name is created. Temporary names carry our process id, so a later run
    removes those a killed process left behind (:func:`clean_stale_partials`).
    """
    targets = check_writable(list(paths), overwrite=overwrite)
    staged: dict[Path, Path] = {}
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_partials(target)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=PARTIAL + target.suffix,
                                       dir=target.parent)
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise survive the rename
            staged[target] = Path(tmp)
        yield staged
        if not overwrite:
            for target in targets:
                if target.exists():
                    raise OutputExistsError(f"output {str(target)!r} appeared while writing; not replaced")
        renamed: list[Path] = []
        try:
            for target, tmp in staged.items():
                os.replace(tmp, target)
                renamed.append(target)
        except BaseException:
            for target in renamed:  # all or nothing
                target.unlink(missing_ok=True)
            raise
    finally:
        for tmp in staged.values():
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    with atomic_files([path], overwrite=overwrite) as staged:
        yield next(iter(staged.values()))


PARTIAL = ".partial"
#: ``.NAME.PID.RANDOM.partial[.ext]`` (files and folders being written) and ``.NAME.old-PID`` (a replaced folder).
_OURS = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)\.[^.]+\.partial(?:\.[^.]*)?|old-(?P<old>\d+))$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Remove temporary files/folders for ``target`` that a killed run of ours left behind.

    Only names of our own pattern whose process is gone are removed (a live writer keeps its own).
    """
    target = Path(target)
    removed = []
    try:
        entries = list(target.parent.iterdir()) if target.parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        match = _OURS.match(entry.name)
        if match is None or match.group("name") != target.name:
            continue
        pid = int(match.group("pid") or match.group("old"))
        if pid == os.getpid() or _alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d stale partial output(s) of %s", len(removed), target)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Make ``folder`` (and its parents) and write a probe file in it, so a read-only mount, a
    missing permission or a file in the way is reported before any work is done — also for root,
    whom permission bits do not stop. Raises :class:`PermissionError` naming the folder."""
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise NotADirectoryError(f"{what} {str(target)!r}: a file of that name is in the way") from None
    except OSError as err:
        raise PermissionError(f"{what} {str(target)!r} cannot be written ({err.strerror or err})") from None
    return target


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; swap it into place only on success.

    Used for checkpoints and model folders: a crash leaves the previous folder intact.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output folder {str(target)!r} already exists (use --overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=PARTIAL, dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would otherwise survive the rename
    try:
        yield tmp
        _normalise_modes(tmp)
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


def _normalise_modes(folder: Path) -> None:
    """Give files written 0600 by a library's own temp-file-and-rename (safetensors weights, for one)
    the mode the umask asks for, so a saved model folder is as readable as any other output."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) == 0o600 and mode != 0o600:
            os.chmod(path, mode)
