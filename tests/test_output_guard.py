"""No command writes over what it reads: the shared check, through links and spellings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lte_cuda.output_guard import refuse_overwriting_inputs


def test_the_same_file_through_links_and_spellings_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(image)
    os.link(image, tmp_path / "hard.png")
    for output in (image, tmp_path / "." / "a.png", tmp_path / "link.png", tmp_path / "hard.png"):
        with pytest.raises(ValueError, match=rf"^--out: {output} is the input file {image}; "):
            refuse_overwriting_inputs(output, [tmp_path / "other.png", image], "--out")
    assert image.read_bytes() == b"x"


def test_other_files_absent_inputs_and_folders(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    refuse_overwriting_inputs(tmp_path / "b.png", [image, None, tmp_path / "absent"], "OUT")
    refuse_overwriting_inputs(tmp_path / "absent", [tmp_path / "absent"], "OUT")  # nothing there
    (tmp_path / "in").mkdir()
    (tmp_path / "same").symlink_to(tmp_path / "in")
    with pytest.raises(ValueError, match=r"^OUT: .*same is the input folder .*in; "):
        refuse_overwriting_inputs(tmp_path / "same", [tmp_path / "in"], "OUT")
    refuse_overwriting_inputs(tmp_path / "in" / "out", [tmp_path / "in"], "OUT")
