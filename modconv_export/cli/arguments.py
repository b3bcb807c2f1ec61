"""The command line's vocabulary: the parser, its help, and the checks every option passes before the
slow steps start (a bad option is one :class:`UsageError` line, never a traceback).

Nothing here imports torch until the options and the model file have passed the checks that need none
(``--help``, ``--version`` and every usage error answer at once); :func:`choose_providers`, which probes the
machine, runs after them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .. import __version__
from .._util.files import Outputs, check_writable_target
from ..errors import ExportError, MissingExtraError, ModconvExportError, UsageError
from .catalogue import FAMILIES
from .console import PROG, Console

if TYPE_CHECKING:
    from ..load.options import GeneratorOptions

__all__ = [
    "arch_options",
    "build_parser",
    "check_targets",
    "choose_providers",
    "generator_options",
    "parse_batch_sizes",
    "parse_input",
    "parse_providers",
    "real_path",
    "shape_text",
    "triton_name",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage + exits; we want one line
        raise UsageError(f"{message} (see --help)")


EPILOG = """\
MODEL may be:
  a modconv-export checkpoint  (modconv_export.save_checkpoint; loaded with weights_only=True)
  a bare state_dict of a known model family (recognised by its keys, also nested in a training
    checkpoint or under a key prefix such as pSp's decoder.; loaded strictly)
  any state_dict with --arch FILE.py:CLASS (your code, trusted like --import-path; the file stays data)
  a pickled nn.Module (torch.save(model)): only with --trust-pickle, and only torch.nn classes,
    pure math functions and classes defined in --import-path directories or the current directory;
    any other global is refused before anything is built (--allow-global MODULE.NAME adds one)
  an NVlabs network pickle (StyleGAN2-ADA, StyleGAN3: ffhq.pkl, network-snapshot-*.pkl) with
    --import-path <checkout>: its classes come from the checkout, the code inside the file never runs

model families (a bare state_dict is recognised by its keys):
{families}

exit status: 0 exported and verified, 1 exported but parity failed (files kept),
             2 bad input, export error, full disk or out of memory (nothing written),
             3 internal error, 130 SIGINT, 143 SIGTERM, 129 SIGHUP (nothing written)

examples:
  modconv-export samples/out/lats_small.pt out.onnx --report-image parity.png
  modconv-export latest_net_g_running.pth lats.onnx --torchscript lats.pt --batch-sizes 1,4 --providers CPUExecutionProvider,CUDAExecutionProvider
  modconv-export generator.pt g.onnx --trust-pickle --input latent=1x512 --save-inputs in.json --save-outputs ref.json --triton-repo models
  modconv-export stylegan2-ffhq-config-f.pt ffhq.onnx --truncation 0.7
  modconv-export GPEN-BFR-512.pth gpen.onnx --arch gpen_export.py:GPEN --arch-kwargs '{{"size": 512, "style_dim": 512, "n_mlp": 8}}' --import-path GPEN/face_model --input image=1x3x512x512
"""


class _VersionAction(argparse.Action):
    """``--version``: the toolkit's version and the ONNX Runtime build it found (distribution, providers)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and the ONNX Runtime build found, then exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ..runtimes.ort import describe_ort_build

        print(f"{PROG} {__version__}\n{describe_ort_build()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    families = "\n".join(f"  {name:<10} {description}" for name, description in FAMILIES)
    p = _Parser(
        prog=PROG,
        description="Export a modulated-convolution generator to ONNX with a dynamic batch, verified against eager PyTorch.",
        epilog=EPILOG.format(families=families),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint, state_dict or (with --trust-pickle) pickled module")
    p.add_argument("output", metavar="OUT.onnx", help="ONNX file to write")
    p.add_argument("--input", action="append", default=[], metavar="NAME=SHAPE",
                   help="example input shape, e.g. latent=1x256 (repeatable, in forward order; axis 0 is the dynamic batch); "
                        "defaults come from the model family")  # fmt: skip
    p.add_argument("--torchscript", metavar="PATH", help="also write a TorchScript file")
    p.add_argument("--exporter", choices=("dynamo", "legacy", "torchscript"), default="dynamo",
                   help="ONNX exporter: dynamo (torch.export, the default) or legacy (torch.onnx's TorchScript-based exporter; "
                        "'torchscript' is its old name here, unrelated to --torchscript PATH)")  # fmt: skip
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: 18)")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="fp16: float16 feature maps, float32 style/demodulation; I/O stays float32 (default: fp32)",
    )
    p.add_argument("--keep-debug-metadata", action="store_true",
                   help="keep the exporter's per-node debug metadata (stack traces with this machine's paths; about half the file)")  # fmt: skip
    p.add_argument("--report", metavar="PATH.json", help="write a JSON report (model, rewrite, export, parity rows)")
    p.add_argument("--report-image", metavar="PATH.png", help="write a reference/output/difference picture (needs Pillow)")
    p.add_argument(
        "--save-inputs", metavar="PATH.json", help="write the parity inputs in Polygraphy's JSON format (polygraphy run --load-inputs)"
    )
    p.add_argument(
        "--save-outputs", metavar="PATH.json", help="write the eager reference outputs as Polygraphy RunResults (--load-outputs)"
    )
    p.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton model repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (NAME: OUT's stem)",
    )
    p.add_argument("--triton-max-batch-size", type=int, default=8, metavar="N", help="max_batch_size of the Triton config (default: 8)")
    p.add_argument("--triton-instance-kind", choices=("cpu", "gpu"),
                   help="an instance_group of this kind in the Triton config (default: none, Triton places the instances "
                        "on the serving machine's GPUs or its CPU)")  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--providers", action="append", metavar="LIST",
                   help="backends to verify on, comma-separated, repeatable (merged): cpu, cuda (or ONNX Runtime's names "
                        "CPUExecutionProvider, CUDAExecutionProvider), openvino, openvino-bf16 (OpenVINO's runtime), "
                        "OpenVINOExecutionProvider (ONNX Runtime's OpenVINO EP); each one named must run here, or the command "
                        "fails saying what to install (default: cpu, and cuda where this machine has it)")  # fmt: skip
    p.add_argument("--batch-sizes", default="1,3", metavar="LIST", help="batch sizes to verify, comma-separated (default: 1,3)")
    p.add_argument(
        "--max-rel-l2", type=tolerance_value, metavar="X", help="relative-L2 limit for every backend (default: per device, 1e-4 on CPU)"
    )
    p.add_argument(
        "--rtol",
        type=tolerance_value,
        metavar="X",
        help="also check element-wise: |out - ref| <= atol + rtol*|ref| (allclose; default: off)",
    )
    p.add_argument(
        "--atol", type=tolerance_value, metavar="X", help="absolute part of that element-wise check (alone: bounds the largest difference)"
    )
    gen = p.add_argument_group("generator files (rosinality checkpoints, NVlabs pickles)")
    gen.add_argument(
        "--network", metavar="NAME", help="which network of a file that holds several (default: the file's own, g_ema / G_ema)"
    )
    gen.add_argument("--latent", choices=("z", "w"), default="z",
                     help="z: mapping + synthesis on z [B, z_dim] (default); w: the synthesis network alone on ws [B, num_ws, w_dim]")  # fmt: skip
    gen.add_argument("--truncation", metavar="PSI|input",
                     help="truncation psi towards the file's average latent, baked in; 'input': psi a graph input truncation_psi [B] (default: psi = 1)")  # fmt: skip
    code = p.add_argument_group("code + state_dict (any codebase)")
    code.add_argument("--arch", metavar="FILE.py:CLASS", help="load the state_dict into this nn.Module class (or MODULE:CLASS); "
                      "its file is trusted code, imported with its folder and --import-path on the path")  # fmt: skip
    code.add_argument("--arch-kwargs", metavar="JSON", help="keyword arguments of the --arch class, a JSON object, e.g. '{\"size\": 512}'")
    code.add_argument("--state-dict-key", metavar="KEY", help="which state_dict of the file: an entry (g_ema), dotted through dicts and "
                      "then a key prefix (state_dict.decoder: pSp's decoder; default: the file's own)")  # fmt: skip
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled module, under an allowlist (see below)")
    p.add_argument(
        "--import-path",
        action="append",
        default=[],
        metavar="DIR",
        help="directory to import a pickled model's classes from (repeatable); for an NVlabs pickle, the checkout",
    )
    p.add_argument(
        "--allow-global", action="append", default=[], metavar="MODULE.NAME", help="also allow this global in a trusted pickle (repeatable)"
    )
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="list rewritten modules, near misses and progress")
    talk.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (the exit status tells the result)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and the exporters' own output")
    p.add_argument("--version", action=_VersionAction)
    return p


_INPUT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([0-9]+(?:x[0-9]+)*)")


def parse_input(text: str) -> tuple[str, tuple[int, ...]]:
    """``"latent=1x256"`` -> ``("latent", (1, 256))``; anything else is a :class:`UsageError`."""
    match = _INPUT.fullmatch(text.strip())
    shape = tuple(int(d) for d in match.group(2).split("x")) if match else ()
    if not match or min(shape) < 1:
        raise UsageError(f"malformed --input {text!r}: expected NAME=SHAPE with SHAPE like 1x3x64x64 (positive integers joined by x)")
    return match.group(1), shape


def tolerance_value(text: str) -> float:
    """A tolerance: a finite number > 0 (``inf`` would make every check pass, ``nan`` none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def real_path(path: str) -> Path:
    """The file a path names (``os.path.realpath`` also survives symlink loops, where ``resolve`` raises)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def check_targets(args: argparse.Namespace, files: Outputs) -> None:
    """Fail before any slow step if an output cannot be written or would clobber the input.

    A missing output folder is made, with its missing parents (as for ``--triton-repo``); the run's
    transaction removes the folders it made if the run fails.
    """
    if Path(args.output).suffix.lower() != ".onnx":
        raise UsageError(f"OUT must be an .onnx file, got {args.output!r} (TorchScript goes to --torchscript PATH)")
    targets = {"OUT": args.output, "--torchscript": args.torchscript, "--report": args.report, "--report-image": args.report_image,
               "--save-inputs": args.save_inputs, "--save-outputs": args.save_outputs}  # fmt: skip
    seen = {real_path(args.model): "MODEL"}
    for option, path in targets.items():
        if path is None:
            continue
        resolved = real_path(path)
        if resolved in seen:
            raise UsageError(f"{option} {path} is the same file as {seen[resolved]}")
        seen[resolved] = option
    for option in ("report_image", "save_inputs", "save_outputs"):
        if args.no_verify and getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} needs the parity check: drop --no-verify")
    for option, path in targets.items():
        if path is not None:
            _writable(option, Path(path).expanduser(), files)
    if args.triton_repo:
        from ..handoff.files import triton_config

        triton_config(triton_name(args), [], [], max_batch_size=args.triton_max_batch_size, kind=triton_kind(args))  # fails now
        repo = Path(args.triton_repo).expanduser()
        if repo.exists() and not repo.is_dir():
            raise ExportError(f"--triton-repo {args.triton_repo}: is not a directory")
        _writable("--triton-repo", repo / "probe", files)
    if args.report_image:
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise MissingExtraError("--report-image needs Pillow: pip install 'modconv-export[image]' (or pip install pillow)") from None


def _writable(option: str, target: Path, files: Outputs) -> None:
    """``target`` can be written: its folder exists (made now if missing) and takes a new file."""
    try:
        parent = target.parent
        if not parent.exists() and not parent.is_symlink():
            try:
                files.make_dirs(parent)
            except OSError as exc:
                raise ExportError(f"output directory cannot be made: {parent} ({exc.strerror or exc})") from None
        check_writable_target(target)
    except ExportError as exc:
        raise ExportError(f"{option} {target}: {exc}") from None


def triton_kind(args: argparse.Namespace) -> str | None:
    """``--triton-instance-kind`` as Triton's name (``KIND_CPU``, ``KIND_GPU``), or ``None``: Triton's choice."""
    return f"KIND_{args.triton_instance_kind.upper()}" if args.triton_instance_kind else None


def parse_providers(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--providers`` (repeated ones merged): parsed by :func:`modconv_export.verify.providers.parse_providers`
    (one vocabulary); ``None`` is the default set."""
    from ..verify.providers import DEFAULT_PROVIDERS, PROVIDERS
    from ..verify.providers import parse_providers as parse

    if text is None:
        return DEFAULT_PROVIDERS
    try:
        return parse(text)
    except ModconvExportError:
        given = ",".join([text] if isinstance(text, str) else text)
        accepted = ", ".join(PROVIDERS[:-1]) + f" or {PROVIDERS[-1]}"
        raise UsageError(f"--providers takes {accepted}, comma-separated, got {given!r}") from None


def choose_providers(args: argparse.Namespace, console: Console) -> tuple[str, ...]:
    """The backends this run verifies on, decided before the slow steps (it probes the machine).

    Each one the user named must run here, else a :class:`MissingExtraError` says what is missing and what
    to install; from the default set, what this machine lacks is skipped with one line. ``args.providers``
    then holds the chosen names.
    """
    from ..verify.providers import provider_name, unavailable
    from .console import captured_fds

    chosen = parse_providers(args.providers)
    with captured_fds(keep=args.debug):  # a failed CUDA probe makes ONNX Runtime log to fd 2
        missing = {s: unavailable(s) for s in chosen}
    missing = {s: why for s, why in missing.items() if why}
    if args.providers is not None and missing:
        listed = "; ".join(f"{provider_name(s)}: {why}" for s, why in missing.items())
        raise MissingExtraError(f"--providers names what cannot run here: {listed}")
    for selection, why in missing.items():
        console.say(f"{selection}: not available here, not run")
        console.detail(f"  ({why})")
    chosen = tuple(s for s in chosen if s not in missing)
    args.providers = ",".join(provider_name(s) for s in chosen)
    return chosen


def generator_options(args: argparse.Namespace) -> GeneratorOptions:
    """``--network``, ``--latent`` and ``--truncation`` as :class:`~modconv_export.load.GeneratorOptions`."""
    from ..load.options import GeneratorOptions, parse_truncation

    truncation = None
    if args.truncation is not None:
        try:
            truncation = parse_truncation(args.truncation)
        except ValueError:
            raise UsageError(f"--truncation takes a finite number (psi) or 'input', got {args.truncation!r}") from None
    if args.network is not None and not args.network.strip():
        raise UsageError("--network takes a network name, e.g. g_ema or G_ema")
    return GeneratorOptions(network=args.network, latent=args.latent, truncation=truncation)


def arch_options(args: argparse.Namespace) -> dict:
    """``--arch``, ``--arch-kwargs`` and ``--state-dict-key`` as :func:`~modconv_export.load.load_model` arguments."""
    from ..load.options import parse_arch, parse_arch_kwargs

    if args.arch is not None:
        parse_arch(args.arch)
    elif args.arch_kwargs is not None:
        raise UsageError("--arch-kwargs needs --arch (the class they are passed to)")
    key = args.state_dict_key
    if key is not None and (not key.strip() or any(not part for part in key.split("."))):
        raise UsageError(f"--state-dict-key takes an entry name, dotted for nested ones (g_ema, state_dict.decoder), got {key!r}")
    return {"arch": args.arch, "arch_kwargs": parse_arch_kwargs(args.arch_kwargs), "state_dict_key": key}


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--batch-sizes takes positive integers, comma-separated (e.g. 1,3,8), got {text!r}")
    return tuple(dict.fromkeys(int(p) for p in parts))


def triton_name(args: argparse.Namespace) -> str:
    return Path(args.output).stem
