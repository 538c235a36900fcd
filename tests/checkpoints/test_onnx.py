"""ONNX models: weights identified from the graph, read one initializer at a time, hostile files refused in one line."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.checkpoints.onnx_file import OnnxCheckpoint
from htsr_cli.engine.describe import describe
from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError
from htsr_cli.settings import AnalyzeSettings
from tests.conftest import assert_user_error

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


class Net(torch.nn.Module):
    """Every weight op torch's exporter writes: Gather, Conv (1-D and 2-D), Gemm, and MatMul (a bias-free Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.conv = torch.nn.Conv1d(16, 32, 3)
        self.conv2 = torch.nn.Conv2d(1, 24, 3)
        self.fc = torch.nn.Linear(32, 40)
        self.nobias = torch.nn.Linear(40, 30, bias=False)
        self.head = torch.nn.Linear(30, 20)

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.embed(ids).transpose(1, 2)).mean(-1)
        y = self.conv2(image).mean((1, 2, 3))
        return self.head(self.nobias(torch.relu(self.fc(x)))) + y[:, None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it needs nothing beyond onnx
        torch.onnx.export(model, (torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 1, 8, 8)), path, dynamo=False)
    return model, path


def test_an_exported_model_analyses_as_its_state_dict(exported):
    model, path = exported
    graph = onnx.load(path).graph
    assert "MatMul" in {node.op_type for node in graph.node}  # the bias-free Linear: a transposed initializer
    ours, theirs = analyze(path, min_evals=2), analyze(model, min_evals=2)
    assert [(l.name, l.kind, l.shape) for l in ours.layers] == [(l.name, l.kind, l.shape) for l in theirs.layers]
    assert [l.name for l in ours.layers] == ["embed", "conv", "conv2", "fc", "nobias", "head"]
    for a, b in zip(ours.layers, theirs.layers):
        assert a.alpha == pytest.approx(b.alpha, rel=1e-9) and a.lambda_max == pytest.approx(b.lambda_max, rel=1e-9)
    assert ours.checkpoint_format["format"] == "onnx"


def test_loaded_initializers_equal_the_modules_weights(exported):
    model, path = exported
    with open_checkpoint(path) as checkpoint:
        for name, parameter in model.state_dict().items():
            if name.endswith("weight"):
                assert torch.equal(checkpoint.load(name), parameter)


def test_describe_reads_no_initializer(exported, monkeypatch):
    monkeypatch.setattr(OnnxCheckpoint, "_read", lambda *args: pytest.fail("read tensor data"))
    description = describe(exported[1], AnalyzeSettings(min_evals=2))
    assert [(l.name, l.shape, l.status) for l in description.layers][-2:] == [
        ("nobias", (30, 40), "analyze"), ("head", (20, 30), "analyze"),
    ]
    assert description.reads.startswith("the ONNX graph and each initializer's name, type and dims")


def initializer(name: str, values: np.ndarray, raw: bool = True) -> TensorProto:
    if raw:
        return numpy_helper.from_array(values, name)
    return helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.flatten().tolist())


def save_graph(path, nodes, initializers) -> None:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers,
    )
    onnx.save(helper.make_model(graph), path)


@pytest.fixture
def weights():
    generator = np.random.default_rng(0)
    return {name: generator.standard_normal(shape).astype(np.float32) for name, shape in {
        "gemm_b": (24, 16), "left": (20, 24), "deconv": (20, 12, 3), "table": (30, 12), "scale": (12, 30),
        "typed": (16, 14),
    }.items()}


def graph_model(path, weights):
    """Gemm with transB=0 (B stored [in, out]), MatMul with the weight on the left, a ConvTranspose,
    a 2-D initializer added (not a weight), an Identity-tied Gather table, and float_data storage."""
    nodes = [
        helper.make_node("Gemm", ["x", "gemm_b"], ["a"], name="/enc/proj/Gemm", transB=0),
        helper.make_node("MatMul", ["left", "a"], ["b"], name="/enc/left/MatMul"),
        helper.make_node("ConvTranspose", ["b", "deconv"], ["c"], name="/up/ConvTranspose"),
        helper.make_node("Identity", ["table"], ["tied"], name="/tie/Identity"),
        helper.make_node("Gather", ["tied", "c"], ["d"], name="/embed/Gather"),
        helper.make_node("Add", ["d", "scale"], ["e"], name="/Add"),
        helper.make_node("MatMul", ["e", "typed"], ["y"], name="/out/MatMul"),
    ]
    inits = [initializer(name, values, raw=name != "typed") for name, values in weights.items()]
    save_graph(path, nodes, inits)
    return path


def test_weights_are_identified_from_the_graph(tmp_path, weights):
    path = graph_model(tmp_path / "g.onnx", weights)
    description = describe(path, AnalyzeSettings(min_evals=2))
    assert [(l.name, l.tensor, l.kind, l.shape, l.skip_reason) for l in description.layers] == [
        ("enc.proj", "enc.proj.weight", "linear", (16, 24), None),  # gemm_b.T
        ("enc.left", "enc.left.weight", "linear", (20, 24), None),
        ("up", "up.weight", "conv1d", (20, 12, 3), None),
        ("embed", "embed.weight", "embedding", (30, 12), None),
        ("out", "out.weight", "linear", (14, 16), None),  # typed.T, from float_data
        ("scale", "scale.weight", "linear", (12, 30), "an input of Add, not a weight matrix "
         "(weights: Gemm, MatMul, Conv, ConvTranspose and Gather)"),
    ]
    with open_checkpoint(path) as checkpoint:
        assert torch.equal(checkpoint.load("enc.proj.weight"), torch.from_numpy(weights["gemm_b"]).T)
        assert torch.equal(checkpoint.load("enc.left.weight"), torch.from_numpy(weights["left"]))
        assert torch.equal(checkpoint.load("out.weight"), torch.from_numpy(weights["typed"]).T)
        assert torch.equal(checkpoint.load("embed.weight"), torch.from_numpy(weights["table"]))


def test_external_data_is_read_one_initializer_at_a_time(tmp_path, weights):
    path = graph_model(tmp_path / "g.onnx", weights)
    model = onnx.load(path)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").stat().st_size > 0
    inline, external = analyze(path, min_evals=2), analyze(tmp_path / "ext.onnx", min_evals=2)
    assert [l.alpha for l in inline.layers] == [l.alpha for l in external.layers]
    assert len([l for l in external.layers if l.status != "skipped"]) == 5


def edit_external(tmp_path, weights, **changes) -> str:
    """A model whose first initializer's external_data entries are replaced by `changes`."""
    path = graph_model(tmp_path / "g.onnx", weights)
    model = onnx.load(path)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    model = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    tensor = model.graph.initializer[0]
    entries = {entry.key: entry.value for entry in tensor.external_data} | changes
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, tmp_path / "bad.onnx")
    return str(tmp_path / "bad.onnx")


@pytest.mark.parametrize(("changes", "needle"), [
    ({"location": "../../etc/passwd"}, "outside the model's directory; refusing to read it"),
    ({"location": "/etc/passwd"}, "outside the model's directory; refusing to read it"),
    ({"length": str(10**12)}, "claims bytes [0, 1,000,000,000,000) of ext.data"),
    ({"length": "64"}, "claims 24x16 float32 (1,536 bytes) but its data holds 64 bytes"),
    ({"offset": "lots"}, "not a number"),
    ({"location": "gone.data"}, "gone.data: no such file or directory"),
])
def test_hostile_external_data_is_one_line(tmp_path, weights, cli, changes, needle):
    assert_user_error(cli("analyze", edit_external(tmp_path, weights, **changes)), needle)


def test_claimed_dims_must_match_the_data(tmp_path, cli):
    tensor = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
    tensor.dims[:] = [2000, 3000]  # 24 MB claimed on 64 bytes
    save_graph(tmp_path / "big.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")], [tensor])
    result = cli("describe", tmp_path / "big.onnx", "-f", "csv")  # listing reads no data: the claim is only listed
    assert result.exit_code == 0 and "fc,fc.weight,linear,3000x2000," in result.stdout
    assert_user_error(cli("analyze", tmp_path / "big.onnx"), "claims 2000x3000 float32 (24,000,000 bytes)", "holds 64 bytes")


def test_damaged_files_are_one_line(tmp_path, cli, exported):
    data = exported[1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    assert_user_error(cli("describe", tmp_path / "cut.onnx"), "cut.onnx: is truncated or not a valid ONNX model")
    (tmp_path / "text.onnx").write_bytes(b"this is not protobuf at all\n" * 10)
    assert_user_error(cli("describe", tmp_path / "text.onnx"), "text.onnx:")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert_user_error(cli("describe", tmp_path / "empty.onnx"), "is empty, not an ONNX model")


def test_without_the_onnx_package_the_error_says_how_to_install_it(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(HtsrError, match=r'net\.onnx: reading ONNX models needs the onnx package: pip install onnx \(or, in a clone of htsr, pip install "\.\[onnx\]"\)$'):
        open_checkpoint(exported[1])


def test_a_derived_name_never_hides_another_initializer(tmp_path):
    """A MatMul weight named after its node's module must not take the name of a stored initializer."""
    generator = np.random.default_rng(1)
    folded = initializer("onnx::MatMul_7", generator.standard_normal((16, 12)).astype(np.float32))
    unused = initializer("fc.weight", generator.standard_normal((12, 16)).astype(np.float32))
    save_graph(tmp_path / "m.onnx", [helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["y"], name="/fc/MatMul")], [folded, unused])
    with open_checkpoint(tmp_path / "m.onnx") as checkpoint:
        assert [(info.key, info.shape) for info in checkpoint.tensors()] == [("fc_.weight", (12, 16)), ("fc.weight", (12, 16))]
