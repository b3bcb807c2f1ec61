"""The exported file: no exporter debug metadata (no paths of this machine), module paths in node names,
useful ``metadata_props`` read back through ONNX Runtime, and a parity verdict bound to one graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import modconv_export
from modconv_export import ExportError, export_onnx, rewrite_model
from modconv_export.errors import ModconvExportError, plain_text
from modconv_export.export.metadata import PREFIX, family_properties, graph_sha256, read_properties, strip_debug_metadata
from modconv_export.families import get_family, registered_families
from modconv_export.families.lats import AGE_CLASSES
from modconv_export.families.registry import Family, InputSpec, TensorInfo, register_family
from modconv_export.verify import check_parity, record_parity

from helpers import FIXTURES

DECODER_CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}
FOREIGN_LAYERS = FIXTURES / "foreign_layers"


@pytest.fixture(scope="module")
def decoder() -> nn.Module:
    torch.manual_seed(0)
    return get_family("decoder").build(DECODER_CONFIG)


@pytest.fixture(scope="module")
def exported(decoder, tmp_path_factory) -> dict[str, Path]:
    """The same dynamo export twice: debug metadata stripped (the default) and kept."""
    d = tmp_path_factory.mktemp("metadata")
    latent = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    props = family_properties(get_family("decoder"))
    return {
        "stripped": export_onnx(decoder, latent, d / "stripped.onnx", output_names=["image"], metadata=props),
        "kept": export_onnx(decoder, latent, d / "kept.onnx", output_names=["image"], metadata=props, keep_debug_metadata=True),
    }


def _ort(path: Path, latent: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"latent": latent})[0]


def test_no_path_of_the_exporting_machine_remains(exported):
    package = Path(modconv_export.__file__).resolve().parent
    places = {str(exported["stripped"].parent), str(package.parent), str(Path(torch.__file__).parent), sys.prefix, str(Path.home())}
    kept, stripped = exported["kept"].read_bytes(), exported["stripped"].read_bytes()
    assert str(package).encode() in kept  # the exporter's stack traces: what the strip removes
    for place in places:
        assert place.encode() not in stripped, place
    assert b"pkg.torch" not in stripped and b"stack_trace" not in stripped
    assert len(stripped) < 0.75 * len(kept)


def test_strip_changes_metadata_only(exported):
    """Stripping the kept file by hand gives the default file's graph, and ONNX Runtime's numbers do not move."""
    model = ir.load(exported["kept"])
    strip_debug_metadata(model)
    assert graph_sha256(ir.serde.serialize_model(model)) == graph_sha256(exported["stripped"])
    latent = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    assert np.array_equal(_ort(exported["kept"], latent), _ort(exported["stripped"], latent))


def test_nodes_are_named_by_module_path(exported, decoder):
    proto = onnx.load(exported["stripped"])
    exportable, _ = rewrite_model(decoder)
    modules = {path for path, _ in exportable.named_modules()}
    names = [n.name for n in proto.graph.node]
    assert len(set(names)) == len(names)
    outside = [n for n in proto.graph.node if n.name.startswith("node_")]  # ops torch.export adds outside the module tree
    assert [n.op_type for n in outside] == ["Shape"]  # the batch size read for the dynamic axis
    for node in proto.graph.node:
        if node.name.startswith("node_"):
            continue
        path, _, op = node.name.rpartition("/")
        assert path in modules or not path, node.name
        assert op.split("_")[0] == node.op_type, node.name
        assert all(o.startswith(f"{node.name}_output_") or o == "image" for o in node.output)
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    assert "blocks.0.conv0/Conv" in convs and "to_rgb/Conv" in convs


def test_metadata_props_read_through_onnxruntime(exported, decoder):
    session = ort.InferenceSession(str(exported["stripped"]), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta == read_properties(exported["stripped"])
    assert meta[f"{PREFIX}version"] == modconv_export.__version__
    assert meta[f"{PREFIX}family"] == "decoder" and meta[f"{PREFIX}precision"] == "fp32" and meta[f"{PREFIX}exporter"] == "dynamo"
    assert json.loads(meta[f"{PREFIX}dynamic_axes"]) == {"latent": {"0": "batch"}, "image": {"0": "batch"}}
    assert json.loads(meta[f"{PREFIX}inputs"])["latent"]["layout"] == "NC"
    assert json.loads(meta[f"{PREFIX}outputs"]) == {"image": {"meaning": "RGB image (tanh)", "layout": "NCHW", "range": [-1.0, 1.0]}}
    _, report = rewrite_model(decoder)
    assert json.loads(meta[f"{PREFIX}rewrite"]) == {"rewritten": report.counts(), "near_misses": 0}
    assert json.loads(meta[f"{PREFIX}parity"]) == {"verified": False}
    assert all(len(v) < 2000 for v in meta.values())


def test_parity_is_recorded_for_the_graph_it_judged(exported, decoder, tmp_path):
    path = tmp_path / "g.onnx"
    path.write_bytes(exported["stripped"].read_bytes())
    digest = graph_sha256(path)
    latent = torch.randn(1, 16)
    report = check_parity(decoder, latent, onnx_path=path, providers=("cpu",))
    record_parity(path, report, graph_digest=digest)
    parity = json.loads(read_properties(path)[f"{PREFIX}parity"])
    assert parity["verified"] and parity["passed"] and parity["graph_sha256"] == digest == graph_sha256(path)
    ort_rows = [r.rel_l2 for r in report.rows if r.backend == "ort-cpu"]
    assert parity["worst_rel_l2"]["ort-cpu"] == float(f"{max(ort_rows):.2e}") and parity["batch_sizes"] == [1, 3]
    assert onnx.load(path).graph == onnx.load(exported["stripped"]).graph  # only model-level properties changed

    other = onnx.load(path)  # a different graph at the same path: its verdict is not recorded
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))
    onnx.save(other, path)
    before = path.read_bytes()
    with pytest.raises(ExportError, match="changed after it was verified"):
        record_parity(path, report, graph_digest=digest)
    assert path.read_bytes() == before


def test_every_family_declares_what_its_tensors_mean():
    for family in registered_families():
        for name, config in family.presets.items():
            names = [s.name for s in family.inputs(config)] + list(family.outputs)
            assert set(names) <= set(family.tensors), (family.name, name)
        props = family_properties(family)
        declared = {**json.loads(props[f"{PREFIX}inputs"]), **json.loads(props[f"{PREFIX}outputs"])}
        assert all(info["meaning"] for info in declared.values())
    lats = get_family("lats")
    code = lats.tensors["target_age"].to_json()
    assert code["classes_years"] == list(AGE_CLASSES) and len(AGE_CLASSES) == lats.preset("full")["num_classes"]
    assert code["dim_per_class"] * len(AGE_CLASSES) == lats.preset("full")["style_dim"]
    assert lats.tensors["image"].to_json()["range"] == [-1.0, 1.0]


def test_a_family_cannot_declare_a_tensor_it_does_not_have():
    with pytest.raises(ValueError, match="declares tensors it does not have: imagee"):
        register_family(Family("typo-test", "test", (r"^x$",), dict, lambda c: nn.Identity(), lambda c: [InputSpec("image", (1, 3))], ("y",),
                               presets={"small": {}}, tensors={"imagee": TensorInfo("a typo")}))  # fmt: skip


def test_api_errors_carry_no_terminal_colour_codes(monkeypatch, tmp_path):
    """torch.onnx colours its "step 3/3" line; the ExportError built from it is plain text."""
    monkeypatch.syspath_prepend(str(FOREIGN_LAYERS))
    import tricky_models

    with pytest.raises(ExportError) as info:
        export_onnx(tricky_models.head("svd"), torch.randn(1, 4), tmp_path / "svd.onnx")
    cause = str(info.value.__cause__)
    assert "\x1b[" in cause  # the exporter's own message is coloured ...
    assert "\x1b" not in str(info.value) and "This is step 3/3" in str(info.value)  # ... ours is not
    assert not (tmp_path / "svd.onnx").exists()
    assert plain_text("\x1b[96mstep\x1b[0m \x1b[1;31mred\x1b[m") == "step red"
    assert str(ModconvExportError("\x1b[2Kdone")) == "done"


def test_check_parity_is_importable_lazily():
    code = (
        "import sys, modconv_export\n"
        "heavy = [m for m in ('modconv_export.verify', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from modconv_export import check_parity\n"
        "from modconv_export.verify import check_parity as direct\n"
        "assert check_parity is direct\n"
        "import modconv_export.cli, modconv_export.handoff\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('polygraphy', 'tritonclient')]  # test-only\n"
        "try:\n    modconv_export.no_such_name\nexcept AttributeError as e:\n    print('ok', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
