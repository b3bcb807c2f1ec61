"""Hand-off files: Polygraphy's JSON (checked with Polygraphy itself, ``polygraphy run`` included) and a
Triton model repository (parsed with tritonclient's ``model_config_pb2``), from one quiet CLI run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import polygraphy.json as polygraphy_json  # test-only dependencies (the `test` extra); the toolkit never imports them
import pytest
import torch
from google.protobuf import text_format
from polygraphy.comparator import IterationResult, RunResults
from tritonclient.grpc import model_config_pb2

from modconv_export import save_checkpoint
from modconv_export.families import get_family
from modconv_export.handoff import GraphTensor, graph_io, save_polygraphy_inputs, save_polygraphy_outputs, triton_config

DECODER_CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}
POLYGRAPHY = Path(sys.executable).parent / "polygraphy"
BATCHES = (1, 2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``modconv-export ckpt out.onnx -q --save-inputs --save-outputs --triton-repo --batch-sizes 1,2``."""
    d = tmp_path_factory.mktemp("handoff")
    torch.manual_seed(0)
    model = get_family("decoder").build(DECODER_CONFIG)
    save_checkpoint(d / "decoder.pt", "decoder", DECODER_CONFIG, model.state_dict())
    args = [d / "decoder.pt", d / "gen.onnx", "-q", "--providers", "CPUExecutionProvider", "--batch-sizes", ",".join(map(str, BATCHES)),
            "--save-inputs", d / "inputs.json", "--save-outputs", d / "outputs.json", "--triton-repo", d / "models"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "modconv_export", *map(str, args)], capture_output=True, text=True, timeout=600)
    return proc, d, model


def test_quiet_run_prints_nothing(run):
    proc, d, _ = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert (d / "gen.onnx").is_file()


def test_saved_inputs_and_outputs_load_in_polygraphy_and_are_the_reference(run):
    proc, d, model = run
    assert proc.returncode == 0, proc.stderr
    feeds = polygraphy_json.load_json(str(d / "inputs.json"))
    results = RunResults.load(str(d / "outputs.json"))
    assert [list(f) for f in feeds] == [["latent"]] * len(BATCHES)
    assert [f["latent"].shape for f in feeds] == [(b, 16) for b in BATCHES] and feeds[0]["latent"].dtype == np.float32
    ((runner, iterations),) = results.items()
    assert runner == "eager-original-cpu" and len(iterations) == len(BATCHES)
    for feed, iteration in zip(feeds, iterations):
        with torch.no_grad():
            expected = model(torch.from_numpy(feed["latent"])).numpy()
        assert list(iteration.keys()) == ["image"] and np.array_equal(iteration["image"], expected)
        assert iteration.runner_name == runner and iteration.runtime > 0


def _polygraphy_run(onnx_path: Path, inputs: Path, outputs: Path) -> subprocess.CompletedProcess:
    command = [str(POLYGRAPHY), "run", str(onnx_path), "--onnxrt", "--load-inputs", str(inputs), "--load-outputs", str(outputs),
               "--atol", "1e-4", "--rtol", "1e-3"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_polygraphy_run_compares_onnxruntime_with_the_saved_reference(run):
    proc, d, _ = run
    assert proc.returncode == 0, proc.stderr
    good = _polygraphy_run(d / "gen.onnx", d / "inputs.json", d / "outputs.json")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PASSED | simple | All outputs matched" in good.stdout + good.stderr
    results = RunResults.load(str(d / "outputs.json"))  # the reference nudged by 1 %: Polygraphy must fail it
    ((runner, iterations),) = results.items()
    wrong = [{"image": it["image"] * 1.01} for it in iterations]
    save_polygraphy_outputs(d / "wrong.json", runner, wrong, [it.runtime for it in iterations])
    bad = _polygraphy_run(d / "gen.onnx", d / "inputs.json", d / "wrong.json")
    assert bad.returncode != 0 and "FAILED" in bad.stdout + bad.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.bool_, np.uint8])
def test_json_layout_is_polygraphys_own(tmp_path, dtype):
    """Byte for byte what polygraphy.json writes, and read back by it, for several dtypes and shapes."""
    rng = np.random.default_rng(0)
    arrays = {"a": (rng.standard_normal((2, 3, 4)) * 3).astype(dtype), "b": np.asarray(rng.integers(0, 2, size=())).astype(dtype)}
    save_polygraphy_inputs(tmp_path / "in.json", [arrays, {"a": arrays["a"][:1]}])
    assert (tmp_path / "in.json").read_text() == polygraphy_json.to_json([arrays, {"a": arrays["a"][:1]}])
    save_polygraphy_outputs(tmp_path / "out.json", "ref", [arrays], [0.25])
    reference = RunResults()
    reference.append(("ref", [IterationResult(outputs=dict(arrays), runtime=0.25, runner_name="ref")]))
    assert (tmp_path / "out.json").read_text() == reference.to_json()
    loaded = RunResults.load(str(tmp_path / "out.json"))["ref"][0]
    assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in arrays.items())


def _parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_repository_matches_the_onnx_file(run):
    proc, d, _ = run
    assert proc.returncode == 0, proc.stderr
    model_dir = d / "models" / "gen"
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")) == ["1", "1/model.onnx", "config.pbtxt"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == (d / "gen.onnx").read_bytes()
    config = _parse((model_dir / "config.pbtxt").read_text())
    proto = onnx.load(d / "gen.onnx")
    assert config.name == "gen" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    for declared, graph in ((config.input, proto.graph.input), (config.output, proto.graph.output)):
        assert [t.name for t in declared] == [v.name for v in graph]
        for t, v in zip(declared, graph):
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            assert v.type.tensor_type.shape.dim[0].dim_param and list(t.dims) == dims[1:]  # the batch is Triton's
            assert model_config_pb2.DataType.Name(t.data_type) == "TYPE_FP32" and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the exporting machine has no say in where Triton serves: no instance_group unless one is asked for
    assert not config.instance_group and "instance_group" not in (model_dir / "config.pbtxt").read_text()


def test_triton_config_types_kind_and_quoting():
    inputs = [GraphTensor('we"ird\\name', onnx.TensorProto.FLOAT16, (None, 3, None)), GraphTensor("ids", onnx.TensorProto.INT64, (None,))]
    outputs = [GraphTensor("y", onnx.TensorProto.FLOAT, (None, 4))]
    config = _parse(triton_config("m-1.v2", inputs, outputs, max_batch_size=16, kind="KIND_GPU"))
    assert [t.name for t in config.input] == ['we"ird\\name', "ids"]
    assert [model_config_pb2.DataType.Name(t.data_type) for t in config.input] == ["TYPE_FP16", "TYPE_INT64"]
    assert [list(t.dims) for t in config.input] == [[3, -1], []] and config.max_batch_size == 16
    ((group,),) = [config.instance_group]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and group.count == 1
    cpu = _parse(triton_config("m", inputs, outputs, max_batch_size=4, kind="KIND_CPU"))
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in cpu.instance_group] == ["KIND_CPU"]
    assert not _parse(triton_config("m", inputs, outputs, max_batch_size=4)).instance_group
    with pytest.raises(Exception, match="dynamic axis 0"):
        triton_config("m", [GraphTensor("x", onnx.TensorProto.FLOAT, (1, 3))], outputs, max_batch_size=8)
    with pytest.raises(Exception, match="model name"):
        triton_config("a/b", inputs, outputs, max_batch_size=8)
    with pytest.raises(Exception, match="instance kind 'KIND_TPU'"):
        triton_config("m", inputs, outputs, max_batch_size=8, kind="KIND_TPU")


def test_graph_io_skips_initializers(run):
    proc, d, _ = run
    inputs, outputs = graph_io(d / "gen.onnx")
    assert [(t.name, t.shape) for t in inputs] == [("latent", (None, 16))]
    assert [(t.name, t.numpy_dtype) for t in outputs] == [("image", np.dtype(np.float32))]


def test_report_and_file_agree_on_parity(run):
    """The quiet run still finalised the file: its parity property is the verified result."""
    from modconv_export.export.metadata import PREFIX, graph_sha256, read_properties

    proc, d, _ = run
    parity = json.loads(read_properties(d / "gen.onnx")[f"{PREFIX}parity"])
    assert parity["passed"] is True and parity["batch_sizes"] == list(BATCHES) and parity["graph_sha256"] == graph_sha256(d / "gen.onnx")
    assert {"ort-cpu", "torchscript-cpu"} <= set(parity["worst_rel_l2"])
