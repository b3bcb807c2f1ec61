"""rosinality's files, written by upstream's own code, exported on the command line and compared with upstream.

Upstream code is never committed: these tests read checkouts named by environment variables and skip without
them (commits pinned in ``tests/fixtures/upstream_codebases/stylegan2_wrappers.py``)::

    MODCONV_UPSTREAM_ROSINALITY=/path/to/stylegan2-pytorch MODCONV_UPSTREAM_PSP=/path/to/pixel2style2pixel \\
    MODCONV_UPSTREAM_GPEN=/path/to/GPEN  python -m pytest -p no:cacheprovider tests/families/test_rosinality_upstream.py

``MODCONV_ROSINALITY_SIZES`` lists the generator sizes (default ``256``; ``1024`` is the full config-f: run it
alone, e.g. under ``flock /tmp/modconv-heavy.lock``). Upstream's ``Generator(size,
512, 8, channel_multiplier=2)`` gets random weights (biases and noise strengths too); its files are written as
upstream writes them -- ``train.py``'s checkpoint with a real ``argparse.Namespace``, ``convert_weight.py``'s
``{'g_ema', 'latent_avg'}``, a pSp coach checkpoint (``state_dict`` with ``encoder.*`` / ``decoder.*``,
``latent_avg``, ``opts``), ``torch.save(g_ema)`` -- and exported by ``python -m modconv_export`` as a user would.
The ONNX file (ONNX Runtime CPU) and the TorchScript file must equal upstream's eager ``forward`` with
``randomize_noise=False`` at batch 1 and 3 within relative L2 1e-5 (the command line's own parity check, against
our eager model, passes too). At 1024 px one run takes about 3 minutes and 8 GB on two cores. GPEN's ``FullGenerator`` (random weights,
its ``state_dict`` saved as ``GPEN-BFR-512.pth`` is) goes through ``--arch`` with the wrapper of docs/command-line.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fixtures.stylegan2.models import perturb
from helpers import FIXTURES, relative_l2

WRAPPERS = FIXTURES / "upstream_codebases"
sys.path.insert(0, str(WRAPPERS))
import stylegan2_wrappers as wrappers  # noqa: E402

CHECKOUT = os.environ.get(wrappers.ROSINALITY_ENV)
needs_rosinality = pytest.mark.skipif(not CHECKOUT, reason=f"set {wrappers.ROSINALITY_ENV} to a rosinality/stylegan2-pytorch checkout")
SIZES = [int(s) for s in os.environ.get("MODCONV_ROSINALITY_SIZES", "256").split(",")]
LIMIT = 1e-5
STYLE = 512


def _train_args(size: int) -> argparse.Namespace:
    """train.py's parsed command line (its defaults), as ``args`` in its checkpoints."""
    parser = argparse.ArgumentParser(description="StyleGAN2 trainer")
    parser.add_argument("path", type=str)
    parser.add_argument("--arch", type=str, default="stylegan2")
    for name, default in (("iter", 800000), ("batch", 16), ("n_sample", 64), ("size", 256), ("path_batch_shrink", 2), ("d_reg_every", 16),
                          ("g_reg_every", 4), ("channel_multiplier", 2), ("local_rank", 0), ("ada_length", 500 * 1000), ("ada_every", 256)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("r1", 10.0), ("path_regularize", 2.0), ("mixing", 0.9), ("lr", 0.002), ("augment_p", 0.0), ("ada_target", 0.6)):
        parser.add_argument(f"--{name}", type=float, default=default)
    parser.add_argument("--ckpt", type=str, default=None)
    parser.add_argument("--wandb", action="store_true")
    parser.add_argument("--augment", action="store_true")
    args = parser.parse_args(["lmdb/ffhq", "--size", str(size)])
    args.latent, args.n_mlp, args.start_iter, args.distributed = 512, 8, 0, False  # set by train.py after parsing
    return args


def _psp_encoder(size: int):
    """pSp's GradualStyleEncoder when its checkout is given, else a small stand-in with encoder-like keys."""
    n_styles = 2 * int(np.log2(size)) - 2
    if os.environ.get(wrappers.PSP_ENV):
        opts = argparse.Namespace(input_nc=3, n_styles=n_styles, output_size=size)
        return wrappers.psp_encoders().GradualStyleEncoder(50, "ir_se", opts), opts
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, bias=False), torch.nn.BatchNorm2d(64), torch.nn.PReLU(64))
    return encoder, argparse.Namespace(input_nc=3, n_styles=n_styles, output_size=size)


@pytest.fixture(scope="module", params=SIZES, ids=[f"{s}px" for s in SIZES])
def files(request, tmp_path_factory):
    """Upstream's g_ema (random weights) and its files, written by upstream's code."""
    size = request.param
    model = wrappers.rosinality()
    torch.manual_seed(size)
    g_ema = perturb(model.Generator(size, STYLE, 8, channel_multiplier=2), seed=1)
    with torch.no_grad():
        latent_avg = g_ema.mean_latent(4096)[0]  # [512], as convert_weight.py stores TF's dlatent_avg
    d = tmp_path_factory.mktemp(f"rosinality{size}")
    g = perturb(model.Generator(size, STYLE, 8, channel_multiplier=2), seed=2)
    disc = model.Discriminator(size, channel_multiplier=2)
    torch.save({"g": g.state_dict(), "d": disc.state_dict(), "g_ema": g_ema.state_dict(),
                "g_optim": torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99)).state_dict(),
                "d_optim": torch.optim.Adam(disc.parameters(), lr=0.002, betas=(0.0, 0.99)).state_dict(),
                "args": _train_args(size), "ada_aug_p": 0.0}, d / "train.pt")  # fmt: skip
    torch.save({"g_ema": g_ema.state_dict(), "latent_avg": latent_avg}, d / "converted.pt")
    encoder, opts = _psp_encoder(size)
    net = torch.nn.Module()
    net.encoder, net.decoder = encoder, g_ema
    torch.save({"state_dict": net.state_dict(), "opts": vars(opts), "latent_avg": latent_avg.repeat(opts.n_styles, 1)}, d / "psp.pt")
    torch.save(g_ema, d / "g_ema_module.pt")
    del g, disc, net, encoder
    return size, g_ema.eval(), latent_avg, d


def _cli(d: Path, name: str, *options: str) -> tuple[Path, Path]:
    """``python -m modconv_export`` on a file, as a user runs it (its own parity check included); the tests then
    compare the files with upstream."""
    site = d / "site"  # the pickled module's upstream imports need the CUDA-build stubs in the subprocess
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(WRAPPERS)!r})\nimport stylegan2_wrappers\nstylegan2_wrappers.install_stubs()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    onnx_path, ts_path = d / f"{name}.onnx", d / f"{name}.ts"
    proc = subprocess.run(
        [sys.executable, "-m", "modconv_export", str(d / f"{name}.pt"), str(onnx_path), "--torchscript", str(ts_path),
         "--providers", "cpu", *options],
        capture_output=True, text=True, timeout=3000, cwd=d, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "family rosinality" in proc.stdout and "parity       PASSED" in proc.stdout, proc.stdout
    exported = next((line for line in proc.stdout.splitlines() if line.startswith("exported ")), "")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child so far, GiB
    print(f"\n{name} {' '.join(options)}: {exported} (peak RSS of the runs so far {peak:.1f} GiB)")
    return onnx_path, ts_path


def _compare(onnx_path: Path, ts_path: Path, feeds: dict[str, torch.Tensor], expected: torch.Tensor) -> dict[str, float]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        from_ts = torch.jit.load(str(ts_path))(*feeds.values())
    errors = {"onnx": relative_l2(from_onnx, expected), "torchscript": relative_l2(from_ts, expected)}
    assert all(e <= LIMIT for e in errors.values()), errors
    return errors


def _z(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, STYLE, generator=torch.Generator().manual_seed(seed))


# (file, options, what upstream computes for a batch of z)
CASES = {
    "train-g_ema": ("train", (), lambda g, avg, z: g([z], randomize_noise=False)[0]),
    "converted-truncation": ("converted", ("--truncation", "0.7"),
                             lambda g, avg, z: g([z], truncation=0.7, truncation_latent=avg, randomize_noise=False)[0]),
    "psp-w": ("psp", ("--latent", "w"), None),
    "pickled-module": ("g_ema_module", ("--trust-pickle", "--import-path", CHECKOUT or "."),
                       lambda g, avg, z: g([z], randomize_noise=False)[0]),
}  # fmt: skip


@needs_rosinality
@pytest.mark.parametrize("case", CASES)
def test_cli_export_equals_upstream(files, case):
    size, g_ema, latent_avg, d = files
    if case == "pickled-module" and size > 256:
        pytest.skip("the pickled module is rebuilt from its weights as the state_dicts are: checked at 256 px")
    name, options, reference = CASES[case]
    onnx_path, ts_path = _cli(d, name, *options)
    for batch in (1, 3):
        z = _z(batch, seed=batch)
        with torch.no_grad():
            if reference is None:  # W+: what a pSp encoder hands the decoder (input_is_latent=True)
                ws = g_ema.style(torch.randn(batch * g_ema.n_latent, STYLE, generator=torch.Generator().manual_seed(batch)))
                feeds = {"ws": ws.reshape(batch, g_ema.n_latent, STYLE)}
                expected = g_ema([feeds["ws"]], input_is_latent=True, randomize_noise=False)[0]
            else:
                feeds, expected = {"z": z}, reference(g_ema, latent_avg, z)
        errors = _compare(onnx_path, ts_path, feeds, expected)
        print(f"{size}px {case} b={batch}: onnx {errors['onnx']:.2e} torchscript {errors['torchscript']:.2e}")


@needs_rosinality
def test_truncation_input_equals_upstream_per_sample(files):
    size, g_ema, latent_avg, d = files
    onnx_path, ts_path = _cli(d, "converted", "--truncation", "input")
    z, psi = _z(3, seed=7), torch.tensor([0.5, 0.7, 1.0])
    with torch.no_grad():
        expected = torch.cat(
            [g_ema([z[i : i + 1]], truncation=float(psi[i]), truncation_latent=latent_avg, randomize_noise=False)[0] for i in range(3)]
        )
    errors = _compare(onnx_path, ts_path, {"z": z, "truncation_psi": psi}, expected)
    print(f"{size}px truncation-input b=3: onnx {errors['onnx']:.2e} torchscript {errors['torchscript']:.2e}")


@needs_rosinality
def test_network_g_is_the_training_generator(files):
    size, g_ema, _, d = files
    if size > 256:
        pytest.skip("the training network is checked at 256 px")
    onnx_path, ts_path = _cli(d, "train", "--network", "g")
    state = torch.load(d / "train.pt", weights_only=False)["g"]
    g = wrappers.rosinality().Generator(size, STYLE, 8, channel_multiplier=2)
    g.load_state_dict(state)
    z = _z(3, seed=3)
    with torch.no_grad():
        errors = _compare(onnx_path, ts_path, {"z": z}, g.eval()([z], randomize_noise=False)[0])
    print(f"{size}px network-g b=3: onnx {errors['onnx']:.2e} torchscript {errors['torchscript']:.2e}")


# -- GPEN through --arch ----------------------------------------------------------------------------------

WRAPPER = '''\
import torch
from gpen_model import FullGenerator  # GPEN/face_model, on the path by --import-path


class GPEN(FullGenerator):
    """FullGenerator's weights and keys; forward(image) -> image (upstream returns (image, latents))."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return super().forward(image)[0]
'''


@pytest.mark.skipif(not os.environ.get(wrappers.GPEN_ENV), reason=f"set {wrappers.GPEN_ENV} to a yangxy/GPEN checkout")
@pytest.mark.parametrize("size,narrow", [(64, 0.25), (256, 0.5)])
def test_gpen_exports_with_arch(size, narrow, tmp_path):
    gpen_model = wrappers.gpen()
    torch.manual_seed(size)
    kwargs = {"size": size, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": narrow}
    model = perturb(gpen_model.FullGenerator(**kwargs), seed=3)
    torch.save(model.state_dict(), tmp_path / "GPEN-BFR.pth")  # how the released GPEN-BFR-512.pth is saved
    (tmp_path / "gpen_export.py").write_text(WRAPPER)
    face_model = Path(os.environ[wrappers.GPEN_ENV]) / "face_model"
    import json

    proc = subprocess.run(
        [sys.executable, "-m", "modconv_export", "GPEN-BFR.pth", "gpen.onnx", "--torchscript", "gpen.ts", "--arch", "gpen_export.py:GPEN",
         "--arch-kwargs", json.dumps(kwargs), "--import-path", str(face_model), "--input", f"image=1x3x{size}x{size}", "--providers", "cpu"],
        capture_output=True, text=True, timeout=3000, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "state_dict in --arch" in proc.stdout
    for batch in (1, 3):
        image = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            expected = model(image)[0]
        errors = _compare(tmp_path / "gpen.onnx", tmp_path / "gpen.ts", {"image": image}, expected)
        print(f"GPEN {size}px b={batch}: onnx {errors['onnx']:.2e} torchscript {errors['torchscript']:.2e}")
