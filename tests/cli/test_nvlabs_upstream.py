"""NVlabs network pickles written by NVlabs' own code, exported from the command line, equal to the checkout's network.

The checkouts are never committed: these tests build networks with a checkout named by an environment variable
and skip without it (pins in ``tests/fixtures/upstream_codebases/stylegan2_wrappers.py``)::

    MODCONV_UPSTREAM_NVLABS=/path/to/stylegan2-ada-pytorch MODCONV_UPSTREAM_STYLEGAN3=/path/to/stylegan3 \\
        python -m pytest tests/cli/test_nvlabs_upstream.py

Each configuration is what NVlabs' train.py builds (:mod:`nvlabs_snapshots`), pickled as its training loop does.
``modconv-export SNAPSHOT.pkl OUT.onnx --import-path CHECKOUT`` must export it and pass its own check, and the ONNX
(ONNX Runtime CPU) and TorchScript files must equal the checkout's ``G_ema(z, c, noise_mode='const',
force_fp32=True)`` at batch 1 and 3 within relative L2 1e-5 (an fp16 ONNX file: the toolkit's fp16 limit, 1e-2). The 1024 px config-f check is heavy (about 10 GB, minutes
on 2 cores): it runs only with ``MODCONV_FULL_SIZE=1``, under ``flock /tmp/modconv-heavy.lock`` on a shared machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from modconv_export import LoadError, load_model

from helpers import FIXTURES, relative_l2, run_exported

WRAPPERS = FIXTURES / "upstream_codebases"
sys.path.insert(0, str(WRAPPERS))
import nvlabs_snapshots as snapshots  # noqa: E402
import stylegan2_wrappers as wrappers  # noqa: E402

Config = snapshots.Config
#: name -> (configuration, pickle protocol (official pickles: 3, Python >= 3.8's pickle.dump: 4), extra options)
CASES = {
    "ada": (Config("ada", "auto"), 3, ()),
    "ada-conditional": (Config("ada", "stylegan2", c_dim=10), 3, ()),
    "stylegan3-t": (Config("stylegan3", "stylegan3-t"), 4, ()),
    "stylegan3-r": (Config("stylegan3", "stylegan3-r"), 4, ()),
    "stylegan3-stylegan2": (Config("stylegan3", "stylegan2"), 4, ()),
    "ada-conditional, truncation 0.7": (Config("ada", "stylegan2", c_dim=10), 3, ("--truncation", "0.7")),
    "stylegan3-t, latent w": (Config("stylegan3", "stylegan3-t"), 4, ("--latent", "w")),
    "ada, fp16": (Config("ada", "auto"), 3, ("--precision", "fp16")),
}
#: The toolkit's float16 limit on the CPU (verify/tolerances.py); the TorchScript file stays float32.
FP16_REL_L2 = 1e-2
FULL_SIZE = Config("ada", "paper1024", resolution=1024, cbase=32768, cmax=512)  # config-f


def _missing(cfg: Config) -> str | None:
    if not os.environ.get(cfg.env):
        return f"set {cfg.env} to an upstream checkout to run it"
    return None


def _params():
    for name, (cfg, _, _) in CASES.items():
        reason = _missing(cfg)
        yield pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=reason or ""), id=name)


def _export(pkl: Path, out: Path, checkout: str, *options: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """The command line in a fresh process, with upstream's import-time stand-ins (requests, pkg_resources)."""
    site = out.parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(WRAPPERS)!r})\nimport stylegan2_wrappers\nstylegan2_wrappers.install_stubs()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "modconv_export", str(pkl), str(out), "--import-path", checkout, "--torchscript", str(out.with_suffix(".ts")),
            "--providers", "cpu", *options]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=out.parent, env=env)


def _expected(G: torch.nn.Module, options: tuple[str, ...], batch: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Inputs of the exported file and the checkout's own image for them."""
    inputs = snapshots.example_inputs(G, batch, seed=batch)
    if "--latent" in options:
        with torch.no_grad():
            ws = G.mapping(inputs[0], inputs[1] if G.c_dim else None)
            return (ws,), G.synthesis(ws, noise_mode="const", force_fp32=True)
    psi = float(options[options.index("--truncation") + 1]) if "--truncation" in options else 1
    return inputs, snapshots.reference(G, *inputs, truncation_psi=psi)


@pytest.fixture(scope="module", params=list(_params()))
def exported(request, tmp_path_factory):
    name = request.param
    cfg, protocol, options = CASES[name]
    d = tmp_path_factory.mktemp(name.replace(",", "").replace(" ", "-"))
    data = snapshots.write_snapshot(cfg, d / "network-snapshot-000000.pkl", protocol)
    proc = _export(d / "network-snapshot-000000.pkl", d / "g.onnx", os.environ[cfg.env], *options)
    return name, cfg, data["G_ema"], d, proc


def test_the_command_line_exports_and_verifies_the_pickle(exported):
    name, cfg, _, d, proc = exported
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NVlabs network pickle (G_ema: Generator" in proc.stdout and "PASSED" in proc.stdout and "FAILED" not in proc.stdout
    assert f"restored from {os.path.realpath(os.environ[cfg.env])}" in proc.stdout and "identical to the source embedded" in proc.stdout
    names = [i.name for i in onnx.load(str(d / "g.onnx"), load_external_data=False).graph.input]
    assert names == (["ws"] if "latent w" in name else ["z", "c"] if cfg.c_dim else ["z"])


@pytest.mark.parametrize("fmt", ["onnx", "jit"])
def test_the_files_equal_the_checkouts_network(exported, fmt):
    name, cfg, G, d, proc = exported
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for batch in (1, 3):
        inputs, expected = _expected(G, CASES[name][2], batch)
        actual = run_exported(fmt, d / ("g.onnx" if fmt == "onnx" else "g.ts"), inputs)
        assert actual.shape == (batch, 3, cfg.resolution, cfg.resolution)
        error = relative_l2(actual, expected)
        print(f"{name}: {fmt} batch {batch}: relative L2 {error:.2e} against the checkout's G_ema")  # pytest -s shows it
        assert error <= (FP16_REL_L2 if fmt == "onnx" and "fp16" in name else 1e-5), (name, fmt, batch, error)


@pytest.mark.skipif(bool(_missing(Config("ada", "auto")) or _missing(Config("stylegan3", "stylegan3-t"))), reason="needs both checkouts")
def test_a_stylegan2_ada_pickle_with_the_stylegan3_checkout_is_refused_strictly(tmp_path):
    """StyleGAN3's networks_stylegan2.py is StyleGAN2-ADA's networks.py with more attributes: the strict restore says so."""
    snapshots.write_snapshot(Config("ada", "auto", resolution=16, cbase=256, cmax=16), tmp_path / "ada.pkl", 3)
    wrappers._on_path(wrappers.STYLEGAN3_ENV)
    with pytest.raises(LoadError, match=r"networks_stylegan2\.py\) does not restore strictly: the checkout's class sets .*"
                                        r"pass the checkout it was written with"):  # fmt: skip
        load_model(tmp_path / "ada.pkl", import_paths=[os.environ[wrappers.STYLEGAN3_ENV]])


@pytest.mark.skipif(os.environ.get("MODCONV_FULL_SIZE") != "1" or _missing(FULL_SIZE) is not None, reason="set MODCONV_FULL_SIZE=1 (heavy)")
def test_a_1024_px_config_f_pickle_exports_and_verifies(tmp_path):
    data = snapshots.write_snapshot(FULL_SIZE, tmp_path / "ffhq.pkl", 3)
    proc = _export(tmp_path / "ffhq.pkl", tmp_path / "ffhq.onnx", os.environ[FULL_SIZE.env], "--batch-sizes", "1,3", timeout=3600)
    (tmp_path / "cli.log").write_text(proc.stdout + proc.stderr)  # the run's timings, for benchmarks/README.md
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "FAILED" not in proc.stdout
    for fmt, file in (("onnx", "ffhq.onnx"), ("jit", "ffhq.ts")):
        inputs = snapshots.example_inputs(data["G_ema"], 1, seed=1)
        assert relative_l2(run_exported(fmt, tmp_path / file, inputs), snapshots.reference(data["G_ema"], *inputs)) <= 1e-5
