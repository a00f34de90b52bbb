"""The one check every command that writes makes before any work: no output is an input.

``lte-sr upscale``, ``inspect``, ``test``, ``train`` and ``export`` call
:func:`refuse_overwriting_inputs` with what they will write and what they read (images,
checkpoints, configs). Two paths are the same file when they resolve to the same path or when
the file system says so (``st_dev`` and ``st_ino``), so symbolic links, hard links and other
spellings (``./a.png``, ``dir/../a.png``) are all caught. A folder output is refused when an
input folder lies at the same path. The files themselves are written atomically
(:func:`lte_cuda.image_io.files.atomic_output`), so an output that is refused, or a run that
fails, leaves what was there before untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def refuse_overwriting_inputs(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], what: str
) -> None:
    """Raise ``ValueError`` if writing ``output`` would replace one of ``inputs``.

    Args:
        output: the file (or folder) a command is about to write.
        inputs: the files and folders it reads; ``None`` entries (an absent optional input,
            e.g. no ``--model``) are skipped, as are inputs that do not exist.
        what: the argument that names ``output`` in messages, e.g. ``'--out'``.

    Raises:
        ValueError: one line naming ``what``, ``output`` and the input it is.
    """
    output = Path(output)
    for source in inputs:
        if source is not None and _same_file(output, Path(source)):
            kind = "folder" if Path(source).is_dir() else "file"
            raise ValueError(f"{what}: {output} is the input {kind} {source}; choose another path")


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one existing file: the same resolved path, or the same device
    and inode (hard links, links to links, bind mounts)."""
    try:
        if not second.exists():  # no input there (e.g. a preset name, not a file)
            return False
        if first.resolve() == second.resolve():
            return True
        a, b = os.stat(first), os.stat(second)
    except (OSError, ValueError, RuntimeError):  # output absent, a NUL in a name, a link loop
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
