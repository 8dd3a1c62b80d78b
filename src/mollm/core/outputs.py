"""Output folders that never cost the user what they had: claimed only after validation, removed again when the start
fails, and an old folder being replaced (``overwrite``) moved aside and deleted only once the new one has started.

::

    with claim_output(path, overwrite=True, resume=False, what="run") as out:
        ...                   # set up; an exception here removes `path` and puts the old folder back
        out.started()         # the first result is on disk: the old folder is deleted now
        ...                   # an exception from here on leaves `path` as it is (resumable)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any


class OutputExistsError(FileExistsError):
    """The output folder exists and neither overwriting nor resuming was asked for."""


class ClaimedOutput:
    """An output folder this process owns for the duration of a ``with claim_output(...)`` block."""

    def __init__(self, path: Path, *, created: bool, aside: Path | None, existed: bool) -> None:
        self.path, self.created, self.aside, self.existed = path, created, aside, existed
        self._started = False

    def __enter__(self) -> ClaimedOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if kind is not None and not self._started:
            self._abandon()
        else:
            self.started()  # a block that ends without error has started by definition (e.g. nothing left to resume)

    def started(self) -> None:
        """The new output holds its first result: the folder it replaces (if any) is deleted now."""
        if self._started:
            return
        self._started = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def _abandon(self) -> None:
        """The start failed: remove what this claim created and restore the replaced folder."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.aside is not None:
            os.replace(self.aside, self.path)
            self.aside = None


def _aside_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.replaced-{os.getpid()}-{time.time_ns()}")


def claim_output(path: str | Path, *, overwrite: bool, resume: bool = False, what: str = "output") -> ClaimedOutput:
    """Claim ``path`` for new output (see the module docstring). An existing non-empty folder is reopened with
    ``resume``, moved aside with ``overwrite``, and otherwise an :class:`OutputExistsError`."""
    path = Path(path)
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    aside: Path | None = None
    if exists and not resume:
        if not overwrite:
            hint = " or resume=true to continue it" if what == "run" else ""
            raise OutputExistsError(
                f"{path} already exists; pass overwrite=true to replace it (the old {what} is kept until the new one "
                f"has started){hint}"
            )
        aside = _aside_name(path)
        os.replace(path, aside)
    created = not path.exists()  # an empty folder the user made stays
    path.mkdir(parents=True, exist_ok=True)
    return ClaimedOutput(path, created=created, aside=aside, existed=exists)
