"""htsr under torchrun: the partition, the error protocol, and real runs of 2 ranks (gloo, CPU).

The runs start torchrun in a subprocess (`python -m torch.distributed.run`, what
the `torchrun` script runs) on a free port with short rendezvous and htsr
timeouts, and bound every run with a subprocess timeout; no test measures speed.
Reports are compared with a single process's to 1e-12 (relative): torchrun
sets OMP_NUM_THREADS=1, and a multi-threaded BLAS may sum in another order, so
only the last bits may differ (with one thread on both sides they are equal).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings as hypothesis_settings, strategies as st

from tests.conftest import FIXTURES, REPO
from htsr_cli.engine import distributed
from htsr_cli.engine.distributed import collective
from htsr_cli.engine.pipeline import analyze
from htsr_cli.checkpoints import open_checkpoint, sharded
from htsr_cli.engine.distributed import Launch, RankFailed, settings_from_json
from htsr_cli.engine.scheduling import estimated_flops, partition
from htsr_cli.errors import HtsrError
from htsr_cli.spectra.matrices import describe
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

PROBE = REPO / "tests" / "engine" / "rank_probe.py"
HTSR_SCRIPT = Path(sys.executable).parent / "htsr"
RUN_TIMEOUT_S = 240  # a bound on a hang, far above a normal run
TINY_LLAMA = FIXTURES / "tiny-llama"
RESNET = FIXTURES / "resnet18_w16.pth"


# --- the partition and the cost model --------------------------------------------------


def test_partition_is_longest_processing_time_first():
    # 5 -> r0, 4 -> r1, 3 -> r1 (4 < 5), 3 -> r0 (5 < 7), 2 -> r1 (7 < 8), 1 -> r0 (8 < 9): loads 9 and 9.
    assert partition([5, 4, 3, 3, 2, 1], 2) == [[0, 3, 5], [1, 2, 4]]
    assert partition([1.0, 1.0, 1.0], 2) == [[0, 2], [1]]  # ties: the lowest rank first
    assert partition([2.0], 3) == [[0], [], []]


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e12), max_size=60), st.integers(1, 9))
def test_partition_covers_every_item_once_and_balances(costs, ranks):
    shares = partition(costs, ranks)
    assert len(shares) == ranks
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    assert all(share == sorted(share) for share in shares)
    loads = [sum(costs[i] for i in share) for share in shares]
    if costs:
        # Greedy list scheduling: no rank exceeds the mean load by more than one item.
        assert max(loads) <= sum(costs) / ranks + max(costs) + 1e-6 * max(1.0, sum(costs))
    assert partition(costs, ranks) == shares  # every rank computes the same partition


def spec(key: str, shape: tuple[int, ...], dtype=torch.float32, min_evals: int = 10):
    return describe(key, shape, dtype, min_evals)


def test_estimated_flops_from_the_shape():
    # Gram 2 * long * short^2 plus tridiagonal reduction 4/3 * short^3, per slice.
    assert estimated_flops(spec("fc.weight", (300, 48))) == pytest.approx(2 * 300 * 48**2 + 4 / 3 * 48**3)
    assert estimated_flops(spec("fc.weight", (48, 300))) == pytest.approx(2 * 300 * 48**2 + 4 / 3 * 48**3)
    # A 3x3 conv is 9 slices of 32 x 16: 9 * (2*32*256 + 4/3*4096) = 196,608.
    assert estimated_flops(spec("conv.weight", (32, 16, 3, 3))) == pytest.approx(196_608)
    assert estimated_flops(spec("q.weight", (8, 8), torch.int8)) == 0.0  # quantized: skipped, never read
    assert estimated_flops(spec("tiny.weight", (2, 384))) == 0.0  # 2 eigenvalues < min_evals
    # FARMS on 4096 x 4096 (algorithms.md): 100 windows of 2000 x 2000 on top of the matrix itself.
    square = spec("w.weight", (4096, 4096))
    windows = 100 * (2 * 2000**3 + 4 / 3 * 2000**3)
    assert estimated_flops(square, FarmsSettings()) == pytest.approx(estimated_flops(square) + windows)


def test_settings_survive_the_job_message():
    for settings in (
        AnalyzeSettings(),
        AnalyzeSettings(xmin="peak", farms=FarmsSettings(1000, 0.5, 4), device="cpu", precision="float32",
                        conv_scale=0.5, min_evals=3, layers=r"layers\.0"),
    ):
        job = distributed.analysis_job(Path("a/b"), settings, True, False)
        received = json.loads(json.dumps(job))
        assert received["source"] == "a/b"
        assert settings_from_json(received["settings"]) == settings


def test_chunks_cut_the_concatenation_at_fixed_sizes():
    tensors = [torch.arange(3.0), torch.arange(5, dtype=torch.float32) + 10, torch.empty(0), torch.ones(4)]
    chunks = list(collective._chunks(tensors, 4))
    assert [chunk.numel() for chunk in chunks] == [4, 4, 4]
    assert all(chunk.dtype == torch.float64 for chunk in chunks)
    assert torch.equal(torch.cat(chunks), torch.cat([tensor.double() for tensor in tensors]))


# --- the torchrun environment ---------------------------------------------------------------


def test_launch_from_the_environment():
    assert Launch.from_env({}) is None
    assert Launch.from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    launch = Launch.from_env({"WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1", "HTSR_DIST_TIMEOUT": "5"})
    assert launch == Launch(rank=9, world_size=16, local_rank=1, timeout=5.0)
    assert Launch.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}).timeout == distributed.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE='two'"),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=None"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "out of range for WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "HTSR_DIST_TIMEOUT": "0"}, "HTSR_DIST_TIMEOUT='0'"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "HTSR_DIST_TIMEOUT": "soon"}, "positive number"),
    ],
)
def test_malformed_environment_is_one_line(environ, needle):
    with pytest.raises(HtsrError) as caught:
        Launch.from_env(environ)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_malformed_environment_on_the_command_line():
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "htsr_cli", "--version"], capture_output=True, text=True,
                          env=env, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "htsr: error: RANK='x': torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to integers; "
        "start htsr with torchrun or unset WORLD_SIZE"
    ]
    assert done.stdout == ""


def test_rank_failure_carries_its_exit_code():
    assert RankFailed(3, "CUDA out of memory.", 1).exit_code == 1
    assert str(RankFailed(3, "x.safetensors: is truncated", 2)) == "rank 3: x.safetensors: is truncated"
    assert HtsrError("plain").exit_code == 2


# --- shards opened only when their tensors are read -------------------------------------------


def test_listing_opens_no_safetensors_shard(monkeypatch):
    opened: list[str] = []
    real = sharded.open_file
    monkeypatch.setattr(sharded, "open_file", lambda path: opened.append(path.name) or real(path))
    with open_checkpoint(TINY_LLAMA) as checkpoint:
        infos = checkpoint.stored()
        assert len(infos) == 39 and opened == []  # 30 matrices and 9 norms
        shard_of = json.loads((TINY_LLAMA / "model.safetensors.index.json").read_text())["weight_map"]
        key = "model.layers.2.mlp.up_proj.weight"
        assert checkpoint.load(key).shape == next(info.shape for info in infos if info.key == key)
        assert opened == [shard_of[key]]


def write_safetensors(path: Path, header: object, data: bytes = b"", *, header_size: int | None = None) -> Path:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    size = len(text) if header_size is None else header_size
    path.write_bytes(size.to_bytes(8, "little") + text + data)
    return path


ENTRY = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    ("header", "data", "header_size", "needle"),
    [
        ({"w": ENTRY}, b"\0" * 12, None, "tensor 'w' has its data at [0, 16) but the file holds 12 bytes of data"),
        ({"w": ENTRY}, b"\0" * 20, None, "its tensor data ends 4 bytes before the file does"),
        ({"w": ENTRY}, b"", 1 << 40, "its header claims 1,099,511,627,776 bytes of a"),
        (b"{not json", b"", None, "header is not JSON"),
        (b"[" * 200_000, b"", None, "header is not JSON"),
        ([1, 2], b"", None, "header is not a JSON object"),
        ({"w": {**ENTRY, "shape": [2, -2]}}, b"\0" * 16, None, "tensor 'w' has shape [2, -2], not a list of non-negative integers"),
        ({"w": {**ENTRY, "data_offsets": [16, 0]}}, b"\0" * 16, None, "tensor 'w' has its data at [16, 0)"),
        ({"w": {**ENTRY, "shape": [2, 3]}}, b"\0" * 16, None, "claims 2x3 F32 (24 bytes) but its data holds 16 bytes"),
        ({"w": {**ENTRY, "dtype": "Q7"}}, b"\0" * 16, None, "has dtype Q7, which this version of torch cannot represent"),
    ],
)
def test_damaged_headers_are_named_when_listing(tmp_path, header, data, header_size, needle):
    path = write_safetensors(tmp_path / "model.safetensors", header, data, header_size=header_size)
    with pytest.raises(HtsrError) as caught, open_checkpoint(path) as checkpoint:
        checkpoint.tensors()
    message = str(caught.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message, message


def test_header_listing_matches_safe_open():
    from safetensors import safe_open

    from htsr_cli.checkpoints.safetensors_file import read_header

    for shard in sorted(TINY_LLAMA.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            expected = [(key, tuple(handle.get_slice(key).get_shape())) for key in handle.keys()]
        assert [(info.key, info.shape) for info in read_header(shard)] == expected


# --- running under torchrun ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"HF_HUB_OFFLINE": "1", "HTSR_DIST_TIMEOUT": "20", "PYTHONPATH": str(REPO), **extra})
    return env


def standalone(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--rdzv-conf=join_timeout=60"]


def node(port: int, node_rank: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node_rank}",
            "--nproc-per-node=1", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-conf=timeout=60"]


def torchrun(launcher: list[str], *command: object, cwd: Path | None = None, **env: str):
    return subprocess.run([*launcher, *map(str, command)], capture_output=True, text=True, cwd=cwd,
                          env=run_env(**env), timeout=RUN_TIMEOUT_S)


def two_nodes(commands: list[list[object]], cwds: list[Path], envs: list[dict] | None = None):
    """Two torchrun launches (`--nnodes 2` on loopback), one per simulated node."""
    port = free_port()
    envs = envs or [{}, {}]
    launches = [
        subprocess.Popen([*node(port, rank), *map(str, commands[rank])], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=cwds[rank], env=run_env(**envs[rank]),
                         start_new_session=True)
        for rank in range(2)
    ]
    try:
        return [launch.communicate(timeout=RUN_TIMEOUT_S) + (launch.returncode,) for launch in launches]
    finally:
        for launch in launches:
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)


def htsr_lines(stderr: str) -> list[str]:
    """htsr's own lines, without torchrun's log lines and failure summary."""
    return [line for line in stderr.splitlines() if line.startswith("htsr: ")]


@contextmanager
def one_thread():
    """References run with one thread, as each torchrun rank does by default (OMP_NUM_THREADS=1);
    oversubscribed OpenMP threads on a busy CI machine are also many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single_process(source, **options):
    with one_thread():
        return analyze(source, **options)


def assert_same_report(single: dict, ranked: dict) -> None:
    """Same layers in the same order, the same numbers to 1e-12 (relative), the same settings."""
    assert [layer["name"] for layer in ranked["layers"]] == [layer["name"] for layer in single["layers"]]
    assert ranked["settings"] == single["settings"]
    assert ranked["checkpoint"] == single["checkpoint"]
    pairs = [(a, b) for x, y in zip(single["layers"], ranked["layers"]) for a, b in zip(x.items(), y.items())]
    pairs += [(a, b) for a, b in zip(single["summary"].items(), ranked["summary"].items()) if a[0] != "seconds"]
    for (key, expected), (other_key, value) in pairs:
        assert key == other_key
        if isinstance(expected, float) and isinstance(value, float):
            assert math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-12), (key, expected, value)
        else:
            assert value == expected, (key, expected, value)
    assert sum(layer["alpha"] is not None for layer in ranked["layers"]) > 0


def test_two_ranks_share_tiny_llama_and_open_only_their_shards(tmp_path):
    done = torchrun(standalone(), PROBE, "analyze", TINY_LLAMA, "-f", "json", "-o", tmp_path / "r.json",
                    PROBE_RECORD=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and htsr_lines(done.stderr) == []
    assert_same_report(single_process(TINY_LLAMA).to_json(), json.loads((tmp_path / "r.json").read_text()))

    shard_of = json.loads((TINY_LLAMA / "model.safetensors.index.json").read_text())["weight_map"]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    loaded = [set(record["loaded"]) for record in records]
    assert loaded[0] and loaded[1] and not loaded[0] & loaded[1]
    with open_checkpoint(TINY_LLAMA) as checkpoint:
        weights = {info.key for info in checkpoint.stored() if info.key.endswith("weight") and len(info.shape) == 2}
    assert loaded[0] | loaded[1] == weights  # every matrix read once, by one rank
    for record in records:
        # Each rank opened exactly the shards holding its tensors, each once: it reads in storage
        # order, and a block straddling two shards (read grouped by shape) keeps both open.
        assert sorted(record["opened"]) == sorted({shard_of[key] for key in record["loaded"]})
        assert len(record["opened"]) == len(set(record["opened"]))
    # The costliest matrices (embedding and head, 512 x 64) went to different ranks.
    assert {"model.embed_tokens.weight", "lm_head.weight"} & loaded[0]
    assert {"model.embed_tokens.weight", "lm_head.weight"} & loaded[1]


def test_two_ranks_through_the_htsr_script_print_only_on_rank_0(tmp_path):
    """`torchrun ... $(which htsr) analyze ...`: stdout is rank 0's JSON alone; rank 1 writes nothing."""
    assert HTSR_SCRIPT.is_file()
    done = torchrun([*standalone(), f"--log-dir={tmp_path / 'logs'}", "--redirects=2"], HTSR_SCRIPT,
                    "analyze", RESNET, "-f", "json")
    assert done.returncode == 0, done.stderr
    assert_same_report(single_process(RESNET).to_json(), json.loads(done.stdout))
    [rank1_err] = (tmp_path / "logs").rglob("1/stderr.log")
    assert rank1_err.read_text() == ""


@pytest.mark.minilm
def test_two_ranks_on_minilm_with_spectra(minilm_dir, tmp_path):
    from htsr_cli.results.spectra_file import load_spectra

    report, spectra = tmp_path / "m.json", tmp_path / "m.spectra.safetensors"
    done = torchrun(standalone(), "-m", "htsr_cli", "analyze", minilm_dir, "--farms", "-f", "json", "-o", report,
                    "--save-spectra", spectra)
    assert done.returncode == 0, done.stderr
    single = single_process(minilm_dir, farms=FarmsSettings(), keep_spectra=True)
    assert_same_report(single.to_json(), json.loads(report.read_text()))
    saved = load_spectra(spectra)
    assert list(saved) == list(single.spectra)  # the layers in the same order
    for name, expected in single.spectra.items():
        for mine, theirs in ((saved[name].esd, expected.esd), (saved[name].farms, expected.farms)):
            assert torch.allclose(mine, theirs, rtol=1e-12, atol=1e-12 * float(theirs.max())), name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.json", "m.spectra.safetensors"]


def test_two_nodes_on_loopback(tmp_path):
    commands = [["-m", "htsr_cli", "analyze", TINY_LLAMA, "-f", "json", "-o", tmp_path / f"node{rank}.json"]
                for rank in (0, 1)]
    results = two_nodes(commands, [tmp_path, tmp_path])
    for stdout, stderr, code in results:
        assert code == 0, stderr
        assert stdout == "" and htsr_lines(stderr) == []
    assert_same_report(single_process(TINY_LLAMA).to_json(), json.loads((tmp_path / "node0.json").read_text()))
    assert not (tmp_path / "node1.json").exists()  # only rank 0 writes


def copy_with_truncated_shard(directory: Path) -> Path:
    shutil.copytree(TINY_LLAMA, directory / "model")
    shard = directory / "model" / "model-00003-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    return shard


def test_a_bad_shard_on_one_node_stops_both(tmp_path):
    """Each node reads its own copy; node 1's has a truncated shard. Both exit non-zero, rank 0 names rank 1."""
    good, bad = tmp_path / "node0", tmp_path / "node1"
    good.mkdir(), bad.mkdir()
    shutil.copytree(TINY_LLAMA, good / "model")
    copy_with_truncated_shard(bad)
    command = ["-m", "htsr_cli", "analyze", "model", "-f", "json", "-o", "report.json"]
    (out0, err0, code0), (out1, err1, code1) = two_nodes([command, command], [good, bad])
    assert code0 != 0 and code1 != 0
    (line,) = htsr_lines(err0)
    assert re.fullmatch(
        r"htsr: error: rank 1: model/model-00003-of-00004\.safetensors: is truncated or not a valid safetensors "
        r"file \(tensor '[\w.]+' has its data at \[[\d,]+, [\d,]+\) but the file holds [\d,]+ bytes of data\)",
        line,
    ), line
    assert htsr_lines(err1) == [] and out0 == out1 == ""
    assert not (good / "report.json").exists() and not (bad / "report.json").exists()
    assert [path.name for path in good.iterdir()] == ["model"]  # no temp file left behind


def test_out_of_memory_on_one_rank_stops_both(tmp_path):
    done = torchrun(standalone(), PROBE, "analyze", TINY_LLAMA, "-o", tmp_path / "r.json", PROBE_OOM_RANK="1")
    assert done.returncode != 0
    assert htsr_lines(done.stderr) == ["htsr: error: rank 1: CUDA out of memory. Tried to allocate 20.00 GiB (probe)"]
    assert "exitcode  : 1" in done.stderr  # both ranks exit 1 (torchrun's summary)
    assert f'File "{PROBE}"' not in done.stderr  # no traceback: OOM is one line, not a bug
    assert list(tmp_path.iterdir()) == []


def test_an_input_error_exits_2_on_every_rank(tmp_path):
    """A user's mistake is exit code 2 on each rank, as without torchrun. torchrun itself then exits 1:
    its agent turns any failed worker into 1 and shows each rank's own code in its summary."""
    done = torchrun(standalone(), "-m", "htsr_cli", "analyze", tmp_path / "missing.pth")
    assert htsr_lines(done.stderr) == [f"htsr: error: {tmp_path / 'missing.pth'}: no such file or directory"]
    assert set(re.findall(r"exitcode\s*: (\d+)", done.stderr)) == {"2"}  # both ranks, in failures and root cause
    assert done.returncode == 1


def test_a_killed_rank_is_noticed_by_its_silence(tmp_path):
    """Rank 1 (on the other node) is killed mid-run; torchrun on node 0 never hears of it, the heartbeat does."""
    command = [PROBE, "analyze", TINY_LLAMA, "-o", tmp_path / "r.json"]
    envs = [{"HTSR_DIST_TIMEOUT": "5"}, {"HTSR_DIST_TIMEOUT": "5", "PROBE_KILL_RANK": "1"}]
    (_, err0, code0), (_, _, code1) = two_nodes([command, command], [tmp_path, tmp_path], envs)
    assert code0 != 0 and code1 != 0
    assert htsr_lines(err0) == ["htsr: error: rank 1: stopped responding (no heartbeat for 5 s)"]
    assert list(tmp_path.iterdir()) == []


# --- every command that analyses, under torchrun ------------------------------------------------


def test_compare_runs_two_analyses(cli, tmp_path):
    degraded = tmp_path / "degraded.pth"
    state = torch.load(FIXTURES / "tiny-cnn-trained.pth", weights_only=True)
    state["fc1.weight"] = torch.randn(state["fc1.weight"].shape, generator=torch.Generator().manual_seed(0))
    torch.save(state, degraded)
    args = ["compare", FIXTURES / "tiny-cnn-trained.pth", degraded, "-f", "json"]
    done = torchrun(standalone(), "-m", "htsr_cli", *args)
    assert done.returncode == 0, done.stderr
    with one_thread():
        single = json.loads(cli(*args).stdout)
    ranked = json.loads(done.stdout)
    assert [layer["name"] for layer in ranked["layers"]] == [layer["name"] for layer in single["layers"]]
    for mine, theirs in zip(ranked["layers"], single["layers"]):
        assert math.isclose(mine["delta"], theirs["delta"], rel_tol=1e-12, abs_tol=1e-12)


def test_gate_exit_code_reaches_torchrun(cli, tmp_path):
    args = ["gate", TINY_LLAMA, "--alpha-max", "3", "--junit", tmp_path / "junit.xml"]
    with one_thread():
        single = cli(*args)
    assert single.exit_code == 1
    expected_junit = (tmp_path / "junit.xml").read_text()
    (tmp_path / "junit.xml").unlink()
    done = torchrun(standalone(), "-m", "htsr_cli", *args)
    assert done.returncode == 1  # torchrun's code for a failed rank; every rank exited 1
    assert done.stdout == single.stdout  # the verdict, printed once
    assert (tmp_path / "junit.xml").read_text() == expected_junit


def test_report_gathers_spectra_for_the_html(tmp_path):
    done = torchrun(standalone(), "-m", "htsr_cli", "report", RESNET, "-o", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 21  # one ESD per analysed layer (the overview is inline SVG)
    assert [path.name for path in tmp_path.iterdir()] == ["r.html"]


@pytest.mark.parametrize(
    "args",
    [
        ["allocate", "sparsity", TINY_LLAMA, "--target", "0.7", "-f", "json"],
        ["lr-schedule", "export", RESNET, "--base-lr", "0.1", "-f", "json"],
    ],
    ids=["allocate-sparsity", "lr-schedule-export"],
)
def test_decisions_equal_a_single_process(cli, args):
    done = torchrun(standalone(), "-m", "htsr_cli", *args)
    assert done.returncode == 0, done.stderr
    with one_thread():
        single = json.loads(cli(*args).stdout)
    ranked = json.loads(done.stdout)
    assert ranked["settings"] == single["settings"]
    assert [entry["name"] for entry in ranked["layers"]] == [entry["name"] for entry in single["layers"]]
    for mine, theirs in zip(ranked["layers"], single["layers"]):
        for key, value in theirs.items():
            if isinstance(value, float):
                assert math.isclose(mine[key], value, rel_tol=1e-12, abs_tol=1e-12), key
            else:
                assert mine[key] == value, key


# --- the library: analyze() is collective under torchrun ------------------------------------

LIBRARY_SCRIPT = """
import json, os, sys
import torch.distributed as dist
import htsr_cli

dist.init_process_group("gloo")  # the caller's own group, as a DDP training script has
calls = []
report = htsr_cli.analyze(sys.argv[1], keep_spectra=True, progress=lambda done, total, layer: calls.append((done, total)))
rank = dist.get_rank()
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as out:
    json.dump({"report": report.to_json(), "spectra": len(report.spectra), "calls": calls}, out)
dist.destroy_process_group()
"""


def test_library_analyze_is_collective_in_a_callers_process_group(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(LIBRARY_SCRIPT)
    done = torchrun(standalone(), script, TINY_LLAMA, tmp_path)
    assert done.returncode == 0, done.stderr
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    single = single_process(TINY_LLAMA).to_json()
    for result in ranks:
        assert_same_report(single, result["report"])  # every rank returns the whole report
    assert ranks[0]["spectra"] == 30 and ranks[1]["spectra"] == 0  # spectra only on rank 0
    # Rank 0's progress counts the layers of both ranks, up to all 30.
    counts = [done for done, total in ranks[0]["calls"] if total == 30]
    assert counts == sorted(counts) and counts[-1] == 30


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_ranks_share_one_gpu(tmp_path):
    """NCCL cannot put two ranks on one device, but htsr sends results over gloo: two ranks may share a GPU."""
    done = torchrun(standalone(), "-m", "htsr_cli", "analyze", TINY_LLAMA, "--device", "cuda", "-f", "json")
    assert done.returncode == 0, done.stderr
    ranked = json.loads(done.stdout)
    assert ranked["settings"]["device"] == "cuda"
    assert_same_report(analyze(TINY_LLAMA, device="cuda").to_json(), ranked)
