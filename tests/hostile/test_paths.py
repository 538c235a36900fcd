"""Paths in and out under hostile or unlucky conditions (issue 14 items 1, 9, 10, 21, 23; issue 13).

Every case: exit 2, one `htsr: error:` line, no traceback, inputs byte for byte
unchanged, the old output kept and no temp file left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, assert_user_error, run_htsr
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths, read_document, write_atomic
from htsr_cli.checkpoints.sources import HubId, locate, parse_hub_id

CNN = FIXTURES / "tiny-cnn-trained.pth"
LLAMA = FIXTURES / "tiny-llama"

# Root ignores permission bits; dropping the two DAC capabilities makes it obey them.
SETPRIV = shutil.which("setpriv")
AS_UNPRIVILEGED = (
    [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 and SETPRIV else []
)
needs_permissions = pytest.mark.skipif(
    os.geteuid() == 0 and not SETPRIV, reason="running as root without setpriv: permission bits are not enforced"
)


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or the file itself) -> sha256 of its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(file): hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


def temp_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A model file, an HF directory, a saved report with spectra and a gate config."""
    from htsr_cli.cli.app import app
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("inputs")
    shutil.copy(CNN, root / "m.pth")
    shutil.copytree(LLAMA, root / "llama")
    result = CliRunner().invoke(
        app, ["analyze", str(root / "m.pth"), "-f", "json", "-o", str(root / "run.json"),
              "--save-spectra", str(root / "run.spectra.safetensors"), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    (root / "cfg.toml").write_text("[tool.htsr.gate]\nalpha_max = 9.0\n")
    return root


# --- item 1: an output never overwrites an input --------------------------------------------------------


def refused_cases(root: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    shard = root / "llama" / "model-00002-of-00004.safetensors"
    hard_shard = root / "hard-shard.safetensors"
    if not hard_shard.exists():
        os.link(shard, hard_shard)
    for name, make in (("link.pth", lambda p: p.symlink_to(root / "m.pth")), ("hard.pth", lambda p: os.link(root / "m.pth", p))):
        if not (root / name).exists():
            make(root / name)
    m, run = str(root / "m.pth"), str(root / "run.json")
    return {
        "analyze -o its input": (["analyze", m, "-o", m], {}),
        "analyze -o a shard of the HF directory": (["analyze", root / "llama", "-o", shard], {}),
        "analyze -o a hard link to a shard": (["analyze", root / "llama", "-o", hard_shard], {}),
        "analyze -o a symlink to the input": (["analyze", m, "-o", root / "link.pth"], {}),
        "analyze -o a hard link to the input": (["analyze", m, "-o", root / "hard.pth"], {}),
        "analyze -o X --save-spectra X": (["analyze", m, "-o", root / "X", "--save-spectra", root / "X"], {}),
        "analyze --plots into the model directory": (["analyze", root / "llama", "--plots", root / "llama"], {}),
        "report run.json -o run.json": (["report", run, "-o", run], {}),
        "report run.json -o its spectra": (["report", run, "-o", root / "run.spectra.safetensors"], {}),
        "allocate sparsity -o its input": (["allocate", "sparsity", m, "--target", "0.5", "--granularity", "matrix", "-o", m], {}),
        "allocate experts -o into the model": (["allocate", "experts", root / "llama", "-o", root / "llama" / "x.json"], {}),
        "lr-schedule -o its input": (["lr-schedule", "export", m, "--base-lr", "0.1", "-o", m], {}),
        "compare -o one of its reports": (["compare", run, m, "-o", run], {}),
        "gate --junit its report": (["gate", run, "--junit", run], {}),
        "gate --junit its config": (["gate", run, "--config", root / "cfg.toml", "--junit", root / "cfg.toml"], {}),
        "gate GITHUB_STEP_SUMMARY is its report": (["gate", run], {"GITHUB_STEP_SUMMARY": run}),
    }


CASE_NAMES = [
    "analyze -o its input", "analyze -o a shard of the HF directory", "analyze -o a hard link to a shard",
    "analyze -o a symlink to the input", "analyze -o a hard link to the input", "analyze -o X --save-spectra X",
    "analyze --plots into the model directory", "report run.json -o run.json", "report run.json -o its spectra",
    "allocate sparsity -o its input", "allocate experts -o into the model", "lr-schedule -o its input",
    "compare -o one of its reports", "gate --junit its report", "gate --junit its config",
    "gate GITHUB_STEP_SUMMARY is its report",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_outputs_that_would_overwrite_an_input_are_refused_before_any_work(case, workdir, monkeypatch):
    from htsr_cli.cli.app import app
    from typer.testing import CliRunner

    args, env = refused_cases(workdir)[case]
    before = digest(workdir)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    line = assert_user_error(result)
    assert any(words in line for words in ("refusing to overwrite it", "lies inside the input directory", "name the same file")), line
    assert digest(workdir) == before
    assert temp_files(workdir) == []


def test_check_output_paths_sees_hard_links_to_files_inside_an_input_directory(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model-00001-of-00002.safetensors").write_bytes(b"shard")
    os.link(model / "model-00001-of-00002.safetensors", tmp_path / "elsewhere.safetensors")
    with pytest.raises(HtsrError, match=r"is an input of this command \(the same file as .*model-00001-of-00002"):
        check_output_paths({"-o": tmp_path / "elsewhere.safetensors"}, [model])
    check_output_paths({"-o": tmp_path / "report.json"}, [model, "org/not-a-path"])


# --- item 9: output OS errors ---------------------------------------------------------------------------


def test_write_atomic_turns_every_os_error_into_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(HtsrError, match=r"out\.json: no space left on device$"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and temp_files(tmp_path) == []


def test_write_atomic_into_a_full_device_and_a_missing_directory(tmp_path):
    with pytest.raises(HtsrError, match=r"^/dev/full: no space left on device$"):
        write_atomic("/dev/full", "x" * 100_000)
    with pytest.raises(HtsrError, match=r"nowhere/out\.json: directory .*nowhere does not exist$"):
        write_atomic(tmp_path / "nowhere" / "out.json", "x")
    with pytest.raises(HtsrError, match=r": is a directory, expected a file name$"):
        write_atomic(tmp_path, "x")


def test_a_long_output_name_is_not_made_too_long_by_the_temp_file(tmp_path):
    name = tmp_path / ("a" * 250 + ".json")  # legal, but not with a prefix and suffix around it
    write_atomic(name, "{}")
    assert name.read_text() == "{}" and temp_files(tmp_path) == []
    with pytest.raises(HtsrError, match=r"a{200,}\.json: file name too long$"):
        write_atomic(tmp_path / ("a" * 300 + ".json"), "{}")


@needs_permissions
def test_read_only_directory_output(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "r.json").write_text("old")
    locked.chmod(0o555)
    try:
        result = run_htsr("analyze", CNN, "-f", "json", "-o", locked / "r.json", prefix=AS_UNPRIVILEGED)
    finally:
        locked.chmod(0o755)
    assert assert_user_error(result) == f"htsr: error: {locked / 'r.json'}: permission denied"
    assert (locked / "r.json").read_text() == "old" and temp_files(locked) == []


def test_file_size_limit_is_reported_not_fatal(tmp_path):
    """EFBIG: with `ulimit -f` the kernel would kill the process with SIGXFSZ; htsr reports it."""
    (tmp_path / "big.json").write_text("old")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    result = run_htsr("analyze", CNN, "-f", "json", "-o", tmp_path / "big.json", preexec_fn=limit)
    assert assert_user_error(result) == f"htsr: error: {tmp_path / 'big.json'}: file too large"
    assert (tmp_path / "big.json").read_text() == "old" and temp_files(tmp_path) == []


@pytest.mark.parametrize("where", ["closed", "full", "broken pipe"])
def test_stdout_that_cannot_be_written(where):
    if where == "closed":
        result = run_htsr("analyze", CNN, "-f", "csv", stdout=subprocess.DEVNULL, prefix=["sh", "-c", 'exec "$@" >&-', "sh"])
        expected = "htsr: error: <stdout>: closed; write the result to a file with -o FILE"
    elif where == "full":
        with open("/dev/full", "w") as full:
            result = run_htsr("analyze", CNN, "-f", "csv", stdout=full)
        expected = "htsr: error: <stdout>: no space left on device"
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before anything is written, as with `| head -1`
        try:
            result = run_htsr("analyze", CNN, stdout=write_end)
        finally:
            os.close(write_end)
        expected = "htsr: error: <stdout>: broken pipe (the program reading the output exited)"
    assert assert_user_error(result) == expected


# --- item 10: input OS errors and words ------------------------------------------------------------------


@needs_permissions
@pytest.mark.parametrize("case", ["directory mode 000", "directory mode 600", "unreadable file", "file in a 000 directory", "report mode 000"])
def test_unreadable_inputs_say_permission_denied(case, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(LLAMA, model)
    (tmp_path / "f.pth").write_bytes(CNN.read_bytes())
    (tmp_path / "r.json").write_text("{}")
    argument, locked, mode = {
        "directory mode 000": (model, model, 0o000),
        "directory mode 600": (model, model, 0o600),
        "unreadable file": (tmp_path / "f.pth", tmp_path / "f.pth", 0o000),
        "file in a 000 directory": (model / "model-00001-of-00004.safetensors", model, 0o000),
        "report mode 000": (tmp_path / "r.json", tmp_path / "r.json", 0o000),
    }[case]
    locked.chmod(mode)
    try:
        result = run_htsr("gate" if case.startswith("report") else "analyze", argument, prefix=AS_UNPRIVILEGED)
    finally:
        locked.chmod(0o755)
    line = assert_user_error(result, "permission denied")
    assert "no such file" not in line.lower()


def test_name_too_long_nul_and_empty_are_one_line():
    assert_user_error(run_htsr("analyze", "x" * 300 + ".pth"), "file name too long")
    with pytest.raises(HtsrError, match="file name too long"):
        locate("y" * 5000)
    with pytest.raises(HtsrError, match=r"^'a\\x00b\.pth': not a valid path \(it contains a NUL character\)$"):
        locate("a\x00b.pth")
    with pytest.raises(HtsrError, match="^the checkpoint path is empty$"):
        locate("")


def test_a_damaged_module_order_cache_entry_is_recomputed(tmp_path, monkeypatch):
    from htsr_cli.checkpoints import open_checkpoint

    monkeypatch.setenv("HTSR_CACHE_DIR", str(tmp_path))
    with open_checkpoint(LLAMA) as checkpoint:
        expected = [info.key for info in checkpoint.tensors()]
    (entry,) = (tmp_path / "module-order").glob("*.json")
    for damage in ('{"keys": [["x"]], "base_model_prefix": "model"}', '{"keys": "abc", "base_model_prefix": 3}', "[" * 100_000):
        entry.write_text(damage)
        with open_checkpoint(LLAMA) as checkpoint:
            assert [info.key for info in checkpoint.tensors()] == expected


def test_regular_files_only_for_documents(tmp_path):
    """A FIFO named as a config or report must not block the gate (item 21)."""
    fifo = tmp_path / "gate.toml"
    os.mkfifo(fifo)
    with pytest.raises(HtsrError, match=r"gate\.toml: not a regular file \(a FIFO\); give a file$"):
        read_document(fifo)
    report_fifo = tmp_path / "r.json"
    os.mkfifo(report_fifo)
    result = run_htsr("gate", report_fifo, "--config", fifo, timeout=60)
    assert_user_error(result, "not a regular file (a FIFO)")
    assert_user_error(run_htsr("gate", tmp_path, timeout=60))


def test_documents_are_size_checked_before_reading(tmp_path, monkeypatch):
    import htsr_cli.io

    big = tmp_path / "r.json"
    big.write_text(" " * 2000)
    monkeypatch.setenv("HTSR_MAX_DOCUMENT_BYTES", "1000")
    with pytest.raises(HtsrError, match=r"r\.json: 2,000 bytes is too large for this kind of file"):
        read_document(big)


# --- issue 13: which paths are paths; messages before torch ---------------------------------------------


def test_a_mistyped_local_path_suggests_its_sibling(tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent)
    result = run_htsr("analyze", "fixtures/tiny-llam")
    assert assert_user_error(result) == (
        "htsr: error: fixtures/tiny-llam: no such file or directory (did you mean fixtures/tiny-llama?)"
    )
    # A missing JSON beside a directory is a missing file, not a hub id (issue 14 item 23).
    assert assert_user_error(run_htsr("gate", "fixtures/run.json")) == "htsr: error: fixtures/run.json: no such file or directory"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/model", HubId("org/model")),
        ("org/model@v1.0", HubId("org/model", "v1.0")),
        ("org/model@refs/pr/3", HubId("org/model", "refs/pr/3")),
        ("Qwen/Qwen2.5-7B", HubId("Qwen/Qwen2.5-7B")),
        ("microsoft/phi-1.5", HubId("microsoft/phi-1.5")),
        ("dir/x.json", None),
        ("org/model.safetensors", None),
        ("./org/model", None),
        ("/abs/model", None),
        ("org/model@", None),
        ("org/model@bad rev", None),
        ("gpt2", None),
        ("a/b/c", None),
        ("org/model@../../../etc", None),  # `..` would climb out of the cache's refs/
    ],
)
def test_hub_ids_and_paths(text, expected):
    assert parse_hub_id(text) == expected


def test_parent_directory_that_exists_makes_it_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert parse_hub_id("models/bert") is None
    assert parse_hub_id("nothere/bert") == HubId("nothere/bert")


def test_uncached_hub_id_with_revision_offline(tmp_path):
    result = run_htsr("analyze", "someone/not-cached@v2", env={"HF_HUB_CACHE": str(tmp_path)})
    assert assert_user_error(result) == (
        "htsr: error: someone/not-cached@v2: not in the local Hugging Face cache and the hub is offline "
        "(HF_HUB_OFFLINE=1); download it first with `hf download someone/not-cached --revision v2` or pass a local path"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "missing.pth"],
        ["report", "missing-dir", "-o", "out.html"],
        ["allocate", "sparsity", "missing.pth", "--target", "0.5"],
        ["allocate", "experts", "fixtures/missing"],
        ["lr-schedule", "export", "missing.pth", "--base-lr", "0.1"],
        ["compare", "missing-a.pth", "missing-b.pth"],
        ["gate", "missing.pth"],
    ],
)
def test_a_missing_path_is_reported_before_torch_is_imported(args, tmp_path):
    code = (
        "import sys\n"
        "from htsr_cli.cli.app import app\n"
        f"code = app({args!r}, standalone_mode=False)\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=FIXTURES.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert "no such file or directory" in result.stderr


def test_report_json_that_is_missing_is_a_missing_file(tmp_path):
    result = run_htsr("compare", tmp_path / "a.json", tmp_path / "b.json")
    assert assert_user_error(result) == f"htsr: error: {tmp_path / 'a.json'}: no such file or directory"


def test_saved_report_is_read_with_a_json_error_not_a_traceback(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"schema": "htsr.report/1"})[:-3])
    assert_user_error(run_htsr("gate", bad), "not valid JSON")
