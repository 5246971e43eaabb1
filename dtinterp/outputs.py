"""Output files of a command: every location checked before the work, every set written all-or-none.

A command that writes files (``evaluate --json --gif``, ``calibrate --out`` and the JSON beside it,
``analyze --out --json``, ``collect --out``) calls :func:`check_outputs` on all of them before it loads a
model or plays an episode, so a typo or an unwritable directory costs nothing, and :func:`write_outputs`
once everything is computed:

1. each output is written to a temp file beside it (same directory, so the final rename is atomic);
2. only when every temp is complete are they renamed over their targets, one by one; a file that is
   replaced is first hard-linked aside, so if a later rename fails the earlier ones are undone;
3. on any failure the temps (and backups) are removed: either every output is new, or none changed.

Problems are one-line :class:`~dtinterp.errors.OutputError` messages naming the flag and the path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dtinterp.errors import OutputError

#: What an output holds: bytes, text (UTF-8), or a function that writes the file at the path it is given.
Content = bytes | str | Callable[[Path], None]


def check_output(flag: str, path: str | os.PathLike, suffixes: Sequence[str] = ()) -> Path:
    """``path`` as a Path if a file can be written there now; else a one-line :class:`OutputError`.

    The name must end in one of ``suffixes`` (if any), must not be a directory or a special file, and
    its directory must exist and accept a new file (tried for real: permissions, read-only mounts).
    """
    p = Path(path)
    text = str(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {text!r}: expected a {' or '.join(suffixes)} file name")
    if p.is_dir():
        raise OutputError(f"{flag} {text!r} is a directory, not a file")
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):
        raise OutputError(f"{flag} {text!r} exists and is not a regular file")
    parent = p.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {text!r}: directory {str(parent)!r} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".probe")
    except OSError as exc:
        raise OutputError(
            f"{flag} {text!r}: directory {str(parent)!r} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return p


def check_output_dir(flag: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a directory files can be written into now, or one that can be created.

    For a run directory (``train --out``): not an existing file, and the directory itself (or, if it
    does not exist yet, its nearest existing ancestor, where it would be created) accepts a new file.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {str(path)!r} exists and is not a directory")
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"{flag} {str(path)!r}: {str(base)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".dtinterp.", suffix=".probe")
    except OSError as exc:
        raise OutputError(
            f"{flag} {str(path)!r}: directory {str(base)!r} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return p


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None], suffixes: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Path]:
    """:func:`check_output` on every ``flag -> path`` given (None: not asked for), and no two the same file."""
    suffixes = suffixes or {}
    checked = {
        flag: check_output(flag, path, suffixes.get(flag, ())) for flag, path in outputs.items() if path
    }
    seen: dict[Path, str] = {}
    for flag, p in checked.items():
        key = p.resolve()
        if key in seen:
            raise OutputError(f"{flag} and {seen[key]} name the same file {str(p)!r}")
        seen[key] = flag
    return checked


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (``mkstemp`` files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_temp(path: Path, content: Content) -> Path:
    """``content`` in a new temp file beside ``path`` (same suffix, so writers that look at it agree)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else content
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _set_aside(path: Path) -> Path | None:
    """A hard link (or copy) of an existing ``path`` to restore it from; None if there is nothing there."""
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{secrets.token_hex(6)}.bak")
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def write_outputs(items: Sequence[tuple[str, str | os.PathLike, Content]]) -> list[Path]:
    """Write every ``(flag, path, content)`` or none of them (see the module docstring); returns the paths."""
    temps: list[Path] = []
    done: list[tuple[Path, Path | None]] = []
    backups: list[Path] = []
    current = ("", "")  # (flag, path) being written: named in the error
    try:
        for flag, target, content in items:
            current = (flag, str(target))
            temps.append(_write_temp(Path(target), content))
        for (flag, target, _), tmp in zip(items, temps):
            current = (flag, str(target))
            path = Path(target)
            backup = _set_aside(path)
            if backup is not None:
                backups.append(backup)
            os.replace(tmp, path)
            done.append((path, backup))
    except BaseException as exc:
        for written, backup in reversed(done):  # undo: every target as it was
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, written)
                else:
                    written.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {current[0]} {current[1]!r}: {exc.strerror or exc}") from None
        raise
    finally:
        for leftover in (*temps, *backups):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
    return [Path(target) for _, target, _ in items]


__all__ = ["Content", "check_output", "check_output_dir", "check_outputs", "write_outputs"]
