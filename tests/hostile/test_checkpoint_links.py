"""Issue 26 class 3: what prune copies out of a checkpoint directory.

Generated: a Hugging Face directory with extra entries of every kind (regular
files, links to files inside it, links leaving it to a secret or /dev/zero,
FIFOs, links to FIFOs, links to directories, link loops) at any depth. A link
leaving the directory is refused before anything is written; otherwise the
output holds exactly the regular files (links inside followed), the rest is
listed as left out, and no secret's bytes ever reach OUT.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hypothesis import given, strategies as st

from tests.conftest import FIXTURES
from tests.hostile.harness import assert_refused, batches, run_cases, snapshot

KINDS = ["file", "link inside", "link to a secret", "link to /dev/zero", "fifo", "link to a fifo", "link to a directory", "loop"]
LEAVING = {"link to a secret", "link to /dev/zero"}
entry = st.tuples(st.sampled_from(KINDS), st.sampled_from(["", "sub", "sub/deeper"]))


def place(model: Path, secret: Path, index: int, kind: str, folder: str) -> str:
    directory = model / folder
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"extra-{index}.txt"
    if kind == "file":
        path.write_text(f"file {index}")
    elif kind == "link inside":
        path.symlink_to(os.path.relpath(model / "config.json", directory))
    elif kind == "link to a secret":
        path.symlink_to(secret)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to a fifo":
        os.mkfifo(directory / f"extra-{index}.fifo")
        path.symlink_to(f"extra-{index}.fifo")
    elif kind == "link to a directory":
        path.symlink_to(os.path.relpath(model, directory))
    else:
        path.symlink_to(path.name)
    return str(path.relative_to(model))


@batches(3)
@given(st.lists(st.lists(entry, min_size=1, max_size=5), min_size=4, max_size=4))
def test_prune_copies_regular_files_and_never_follows_a_link_out(tmp_path_factory, models):
    cases, layouts = [], []
    for entries in models:
        root = tmp_path_factory.mktemp("links")
        secret = root / "secret.txt"
        secret.write_text("SECRET-BYTES")
        model = shutil.copytree(FIXTURES / "tiny-llama", root / "model")
        layout = {place(model, secret, index, kind, folder): kind for index, (kind, folder) in enumerate(entries)}
        layouts.append((root, model, layout, snapshot(model)))
        cases.append({"args": ["prune", model, "--target", "0.5", "--allocation", "uniform", "-o", root / "out", "-q"]})
    for (root, model, layout, before), outcome in zip(layouts, run_cases(cases)):
        assert snapshot(model) == before
        refusals = [words for kind, words in (("leaving", "outside the model directory; htsr prune does not follow it"),
                                              ("loop", "too many levels of symbolic links"))
                    if (LEAVING if kind == "leaving" else {"loop"}) & set(layout.values())]
        if refusals:  # whichever of them the walk meets first
            line = assert_refused(outcome)
            assert any(words in line for words in refusals), line
            assert sorted(path.name for path in root.iterdir()) == ["model", "secret.txt"]
            continue
        assert outcome.code == 0, outcome.stderr
        out = root / "out"
        record = json.loads((out / "htsr-prune.json").read_text())
        left_out = {item["path"] for item in record["files"]["left_out"]}
        for relative, kind in layout.items():
            copied = out / relative
            if kind in ("file", "link inside"):
                assert copied.is_file() and not copied.is_symlink() and copied.read_bytes() == (model / relative).read_bytes()
            else:
                assert not os.path.lexists(copied) and relative in left_out, (relative, kind)
        for path in out.rglob("*"):
            assert not path.is_symlink() and (path.is_dir() or path.is_file()), path
            assert path.is_dir() or b"SECRET-BYTES" not in path.read_bytes()
