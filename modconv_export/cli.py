"""``modconv-export MODEL OUT.onnx``: load -> rewrite -> export -> verify from the shell.

Every mistake the user can make is one line on stderr (``modconv-export: error: ...``) and exit 2,
never a traceback (``--debug`` shows it) and never a half-written file: the outputs of a run are one
transaction (:class:`~modconv_export.files.Outputs`), renamed into place together after every step
succeeded, and every output directory is checked before the slow export starts. A parity failure is
exit 1: the files stay, the table says why. Signals: see :mod:`modconv_export.interrupts`.

Step results and the result table go to stdout; live progress for the slow steps goes to stderr only
on a terminal (or with ``-v``), so a script's stderr holds nothing but the error line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from . import __version__
from .console import PROG, Console, captured_fds, error, file_size, plural
from .diagnose import describe_export_failure
from .errors import ExportError, ModconvExportError
from .export import Prepared, export_onnx, export_torchscript, prepare_export, resolve_opset
from .families import registered_families
from .files import Outputs, check_writable_target, write_bytes
from .interrupts import Interrupted, signals_raise
from .load import LoadedModel, forward_parameters, load_model
from .memory import OutOfMemory, check_fits, is_allocation_failure
from .metadata import family_properties, graph_sha256, record_parity
from .rewrite import registered_rules
from .rewrite.graph import GRAPH_RULES

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARITY", "EXIT_USAGE", "UsageError", "build_parser", "main", "parse_input"]

EXIT_OK, EXIT_PARITY, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(ModconvExportError):
    """A malformed command line (bad option, malformed ``--input``, conflicting paths)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits; we want one line
        raise UsageError(f"{message} (see --help)")


EPILOG = """\
MODEL may be:
  a modconv-export checkpoint  (modconv_export.save_checkpoint; loaded with weights_only=True)
  a bare state_dict of a known model family (recognised by its keys; loaded strictly)
  a pickled nn.Module (torch.save(model)): only with --trust-pickle, and only torch.nn classes,
    pure math functions and classes defined in --import-path directories or the current directory;
    any other global is refused before anything is built (--allow-global MODULE.NAME adds one)

model families (a bare state_dict is recognised by its keys):
{families}

exit status: 0 exported and verified, 1 exported but parity failed (files kept),
             2 bad input, export error, full disk or out of memory (nothing written),
             3 internal error, 130 SIGINT, 143 SIGTERM, 129 SIGHUP (nothing written)

examples:
  modconv-export samples/out/lats_small.pt out.onnx --report-image parity.png
  modconv-export latest_net_g_running.pth lats.onnx --torchscript lats.pt --batch-sizes 1,4 --providers CPUExecutionProvider,CUDAExecutionProvider
  modconv-export generator.pt g.onnx --trust-pickle --input latent=1x512 --save-inputs in.json --save-outputs ref.json --triton-repo models
"""


class _VersionAction(argparse.Action):
    """``--version``: the toolkit's version and the ONNX Runtime build it found (distribution, providers)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and the ONNX Runtime build found, then exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .ort_options import describe_ort_build

        print(f"{PROG} {__version__}\n{describe_ort_build()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    families = "\n".join(f"  {f.name:<10} {f.description}" for f in registered_families())
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
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="ONNX exporter (default: dynamo)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: 18)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: float16 feature maps, float32 style/demodulation; I/O stays float32 (default: fp32)")
    p.add_argument("--keep-debug-metadata", action="store_true",
                   help="keep the exporter's per-node debug metadata (stack traces with this machine's paths; about half the file)")  # fmt: skip
    p.add_argument("--report", metavar="PATH.json", help="write a JSON report (model, rewrite, export, parity rows)")
    p.add_argument("--report-image", metavar="PATH.png", help="write a reference/output/difference picture (needs Pillow)")
    p.add_argument("--save-inputs", metavar="PATH.json", help="write the parity inputs in Polygraphy's JSON format (polygraphy run --load-inputs)")
    p.add_argument("--save-outputs", metavar="PATH.json", help="write the eager reference outputs as Polygraphy RunResults (--load-outputs)")
    p.add_argument("--triton-repo", metavar="DIR", help="also write a Triton model repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (NAME: OUT's stem)")
    p.add_argument("--triton-max-batch-size", type=int, default=8, metavar="N", help="max_batch_size of the Triton config (default: 8)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--providers", default="cpu,cuda", metavar="LIST",
                   help="devices to verify on: cpu, cuda or ONNX Runtime's names (CUDAExecutionProvider), openvino (f32), "
                        "openvino-bf16, comma-separated (default: cpu,cuda; what cannot run here is reported as not run)")  # fmt: skip
    p.add_argument("--batch-sizes", default="1,3", metavar="LIST", help="batch sizes to verify, comma-separated (default: 1,3)")
    p.add_argument("--max-rel-l2", type=_limit, metavar="X", help="relative-L2 limit for every backend (default: per device, 1e-4 on CPU)")
    p.add_argument("--rtol", type=_limit, metavar="X", help="also check element-wise: |out - ref| <= atol + rtol*|ref| (allclose; default: off)")
    p.add_argument("--atol", type=_limit, metavar="X", help="absolute part of that element-wise check (alone: bounds the largest difference)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled module, under an allowlist (see below)")
    p.add_argument("--import-path", action="append", default=[], metavar="DIR", help="directory to import a pickled model's classes from (repeatable)")
    p.add_argument("--allow-global", action="append", default=[], metavar="MODULE.NAME", help="also allow this global in a trusted pickle (repeatable)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="list rewritten modules, near misses and progress")
    talk.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (the exit status tells the result)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and the exporters' own output")
    p.add_argument("--version", action=_VersionAction)
    return p


# -- small parsers and checks ---------------------------------------------------------------------

_INPUT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([0-9]+(?:x[0-9]+)*)")


def parse_input(text: str) -> tuple[str, tuple[int, ...]]:
    """``"latent=1x256"`` -> ``("latent", (1, 256))``; anything else is a :class:`UsageError`."""
    match = _INPUT.fullmatch(text.strip())
    shape = tuple(int(d) for d in match.group(2).split("x")) if match else ()
    if not match or min(shape) < 1:
        raise UsageError(f"malformed --input {text!r}: expected NAME=SHAPE with SHAPE like 1x3x64x64 (positive integers joined by x)")
    return match.group(1), shape


def _limit(text: str) -> float:
    """A tolerance: a finite number > 0 (``inf`` would make every check pass, ``nan`` none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _real(path: str) -> Path:
    """The file a path names (``os.path.realpath`` also survives symlink loops, where ``resolve`` raises)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def _check_targets(args: argparse.Namespace) -> None:
    """Fail before any slow step if an output cannot be written or would clobber the input."""
    if Path(args.output).suffix.lower() != ".onnx":
        raise UsageError(f"OUT must be an .onnx file, got {args.output!r} (TorchScript goes to --torchscript PATH)")
    targets = {"OUT": args.output, "--torchscript": args.torchscript, "--report": args.report, "--report-image": args.report_image,
               "--save-inputs": args.save_inputs, "--save-outputs": args.save_outputs}  # fmt: skip
    seen = {_real(args.model): "MODEL"}
    for option, path in targets.items():
        if path is None:
            continue
        try:
            check_writable_target(path)
        except ExportError as exc:
            raise ExportError(f"{option} {path}: {exc}") from None
        resolved = _real(path)
        if resolved in seen:
            raise UsageError(f"{option} {path} is the same file as {seen[resolved]}")
        seen[resolved] = option
    for option in ("report_image", "save_inputs", "save_outputs"):
        if args.no_verify and getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} needs the parity check: drop --no-verify")
    if args.triton_repo:
        from .handoff import triton_config

        triton_config(_triton_name(args), [], [], max_batch_size=args.triton_max_batch_size, gpu=False)  # a bad name or size fails now
        repo = Path(args.triton_repo).expanduser()
        try:
            check_writable_target((repo if repo.is_dir() else repo.parent) / "probe")
        except ExportError as exc:
            raise ExportError(f"--triton-repo {args.triton_repo}: {exc}") from None
    if args.report_image:
        from .verify import MissingExtraError

        try:
            import PIL  # noqa: F401
        except ImportError:
            raise MissingExtraError("--report-image needs Pillow: pip install 'modconv-export[image]' (or pip install pillow)") from None


def _providers(text: str) -> tuple[str, ...]:
    """``--providers``: parsed by :func:`modconv_export.verify.harness.parse_providers` (one vocabulary)."""
    from .verify.harness import PROVIDERS, parse_providers

    try:
        return parse_providers(text)
    except ModconvExportError:
        accepted = ", ".join(PROVIDERS[:-1]) + f" or {PROVIDERS[-1]}"
        raise UsageError(f"--providers takes {accepted}, comma-separated, got {text!r}") from None


def _batch_sizes(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--batch-sizes takes positive integers, comma-separated (e.g. 1,3,8), got {text!r}")
    return tuple(dict.fromkeys(int(p) for p in parts))


def _triton_name(args: argparse.Namespace) -> str:
    return Path(args.output).stem


# -- output ---------------------------------------------------------------------------------------


# -- the steps ------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    names: list[str]
    shapes: list[tuple[int, ...]]
    tensors: tuple
    specs: list | None  # InputSpec per input when the family knows them (realistic parity inputs)


def _resolve_inputs(loaded: LoadedModel, given: list[tuple[str, tuple[int, ...]]]) -> _Inputs:
    names_given = [n for n, _ in given]
    dupes = sorted({n for n in names_given if names_given.count(n) > 1})
    if dupes:
        raise UsageError(f"--input {dupes[0]} is given more than once")
    shapes = dict(given)
    if loaded.inputs:
        known = [s.name for s in loaded.inputs]
        unknown = [n for n in names_given if n not in known]
        if unknown:
            raise UsageError(f"--input {unknown[0]}: this model's inputs are {', '.join(known)}")
        specs = list(loaded.inputs)
        names = known
        dims = [tuple(shapes.get(s.name, s.shape)) for s in specs]
        _check_memory(names, dims, [s.dtype.itemsize for s in specs])
        tensors = tuple(s.example(d, seed=i) for i, (s, d) in enumerate(zip(specs, dims)))
        return _Inputs(names, dims, tensors, specs)
    params, required, varargs = forward_parameters(loaded.module)
    signature = f"forward({', '.join(params)})"
    if not given:
        example = " ".join(f"--input {p}=SHAPE" for p in required or params) or "--input NAME=SHAPE"
        raise UsageError(f"this model has no known family, so its input shapes are needed: its {signature} takes {example}")
    if not varargs:
        if names_given != params[: len(names_given)]:
            raise UsageError(f"--input names must follow {signature} in order, got {', '.join(names_given)}")
        missing = [p for p in required if p not in names_given]
        if missing:
            raise UsageError(f"missing --input for {', '.join(missing)} ({signature})")
    _check_memory(names_given, [s for _, s in given], [4] * len(given))
    gen = torch.Generator().manual_seed(0)
    tensors = tuple(torch.randn(*shape, generator=gen) for _, shape in given)
    return _Inputs(names_given, [s for _, s in given], tensors, None)


def _check_memory(names: Sequence[str], shapes: Sequence[tuple[int, ...]], itemsizes: Sequence[int]) -> None:
    """Refuse example inputs this machine cannot hold, before allocating them (at the largest batch used)."""
    per_sample = sum(math.prod(s[1:]) * size for s, size in zip(shapes, itemsizes))
    batch = max([3, *(s[0] for s in shapes if s)])  # the exporter traces batch 2, the parity check runs 3
    given = " ".join(f"{n}={_shape_text(s)}" for n, s in zip(names, shapes))
    check_fits(per_sample * batch, f"the inputs {given} (at batch {batch}, before any activation)")


def _run_eager(module: torch.nn.Module, inputs: _Inputs):
    try:
        with torch.no_grad():
            return module(*inputs.tensors)
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        given = " ".join(f"{n}={_shape_text(s)}" for n, s in zip(inputs.names, inputs.shapes))
        if is_allocation_failure(exc):
            raise OutOfMemory(f"out of memory running the model on the inputs {given}: {text}") from exc
        raise UsageError(f"the model rejects the inputs {given}: {type(exc).__name__}: {text}") from exc


def _outputs_of(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _rewrite(module: torch.nn.Module, inputs: _Inputs, precision: str, console: Console) -> Prepared:
    console.progress("rewriting (module rules, then the traced graph) ...")
    with captured_fds(keep=False):
        prepared = prepare_export(module, inputs.tensors, precision=precision)
    report = prepared.report
    counts = report.counts()
    graph_rules = set(GRAPH_RULES.values())
    module_counts = {n: c for n, c in counts.items() if n not in graph_rules}
    builtin = ["modulated_conv", "blur", "equal_lr"]  # always shown; other rules when they matched
    names = [n for n in builtin if n in {r.name for r in registered_rules()}] + sorted(set(module_counts) - set(builtin))
    detail = ", ".join(f"{n}: {counts.get(n, 0)}" for n in names)
    console.say(f"rewrote {sum(module_counts.values())} modules ({detail})")
    convs, demods = counts.get(GRAPH_RULES["conv"], 0), counts.get(GRAPH_RULES["demod"], 0)
    console.say(f"rewrote {plural(convs, 'batch-grouped convolution', 'batch-grouped convolutions')} in the traced graph"
                f" ({plural(demods, 'demodulation', 'demodulations')} computed from the style)")  # fmt: skip
    for path, rule in report.rewritten:
        console.detail(f"  {path or '<root>'} -> {rule}")
    for line in report.describe_notes():  # e.g. how noise injection was made deterministic
        console.say(f"  note: {line}")
    if report.near_misses:
        if console.verbose:
            for line in report.describe_near_misses():
                console.detail(f"  near miss: {line}")
        else:
            console.say(f"  {plural(len(report.near_misses), 'near miss', 'near misses')} left as they are (-v shows why)")
    return prepared


def _torchscript_source(loaded: LoadedModel, prepared: Prepared, inputs: _Inputs) -> torch.nn.Module:
    """The float32 form without ONNX lowerings that the TorchScript file (and the eager row) is made from:
    the ONNX one when it is that already, else a second rewrite."""
    if prepared.fp32 is not None and not getattr(prepared.fp32, "lowerings", None):
        return prepared.fp32
    with captured_fds(keep=False):
        return prepare_export(loaded.module, inputs.tensors, lowerings=False).module


def _export(args: argparse.Namespace, loaded: LoadedModel, prepared: Prepared, inputs: _Inputs, outputs: list, console: Console, files: Outputs, ts_source) -> dict:
    exportable, rewrite = prepared.module, prepared.report
    opset = resolve_opset(args.opset, args.exporter)
    family_outputs = list(loaded.family.outputs) if loaded.family and len(loaded.family.outputs) == len(outputs) else None
    console.progress(f"exporting {args.output} ({args.exporter} exporter, opset {opset}) ...")
    start = time.perf_counter()
    onnx_tmp = files.stage(args.output)
    with captured_fds(keep=args.debug):
        try:
            export_onnx(exportable, inputs.tensors, onnx_tmp, exporter=args.exporter, opset=opset, rewrite=False,
                        input_names=inputs.names, output_names=family_outputs, precision=args.precision,
                        keep_debug_metadata=args.keep_debug_metadata, metadata=family_properties(loaded.family))  # fmt: skip
        except ExportError as exc:
            misses = [p for p, _, _ in rewrite.near_misses]
            better = describe_export_failure(prepared.source or exportable, inputs.tensors, exc.__cause__, args.exporter, misses) if exc.__cause__ else None
            if misses:  # an unrewritten look-alike is the usual reason a generator does not export
                listed = ", ".join(p or "<root>" for p in misses[:3])
                better = f"{better or exc}; note: {plural(len(misses), 'near miss', 'near misses')} left unrewritten ({listed}; -v shows why)"
            if better is None:
                raise
            raise ExportError(better) from exc
    seconds = time.perf_counter() - start
    console.say(f"exported {args.output} ({file_size(onnx_tmp)}, {args.exporter} exporter, opset {opset}, {args.precision}, dynamic batch) in {seconds:.1f} s")
    info = {"onnx": str(args.output), "exporter": args.exporter, "opset": opset, "precision": args.precision, "seconds": round(seconds, 3), "torchscript": None}
    if args.torchscript:
        console.progress(f"writing TorchScript {args.torchscript} ...")
        start = time.perf_counter()
        ts_tmp = files.stage(args.torchscript)
        with captured_fds(keep=args.debug):
            export_torchscript(ts_source, inputs.tensors, ts_tmp, rewrite=False)
        console.say(f"wrote TorchScript {args.torchscript} ({file_size(ts_tmp)}) in {time.perf_counter() - start:.1f} s")
        info["torchscript"] = str(args.torchscript)
    return info


def _verify(args: argparse.Namespace, loaded: LoadedModel, inputs: _Inputs, console: Console, files: Outputs, exportable: torch.nn.Module):
    """Check this run's own files (the temporaries), whatever another run writes to the same names meanwhile."""
    from .verify import check_parity

    make = None
    if inputs.specs:
        specs, dims = inputs.specs, inputs.shapes

        def make(batch: int, seed: int) -> tuple:
            return tuple(s.example((batch, *d[1:]), seed=seed + i) for i, (s, d) in enumerate(zip(specs, dims)))

    console.progress("verifying against eager PyTorch ...")
    start = time.perf_counter()
    with captured_fds(keep=args.debug):
        report = check_parity(loaded.module, inputs.tensors, onnx_path=files.temporary(args.output),
                              torchscript_path=files.temporary(args.torchscript) if args.torchscript else None,
                              trace_torchscript=not args.torchscript, providers=_providers(args.providers), batch_sizes=_batch_sizes(args.batch_sizes),
                              rtol=args.rtol, atol=args.atol, max_rel_l2=args.max_rel_l2, make_inputs=make, precision=args.precision,
                              exportable=exportable)  # fmt: skip
    report.files = {"onnx": str(args.output), "torchscript": str(args.torchscript) if args.torchscript else None}
    console.say(f"verified in {time.perf_counter() - start:.1f} s")
    console.say(report.format_table())
    return report


def _hand_off(args: argparse.Namespace, report, files: Outputs) -> list[tuple[str, str]]:
    """Polygraphy data and the Triton repository, from the finished (verified and recorded) file."""
    from . import handoff

    rows = []
    onnx_tmp = files.temporary(args.output)
    if args.save_inputs or args.save_outputs:
        staged = [files.stage(p) if p else None for p in (args.save_inputs, args.save_outputs)]
        handoff.save_parity_data(report, onnx_tmp, *staged)
        rows.append(("polygraphy", ", ".join(p for p in (args.save_inputs, args.save_outputs) if p)))
    if args.triton_repo:
        with captured_fds(keep=args.debug):  # ONNX Runtime logs a failed CUDA probe on fd 2
            gpu = handoff.cuda_found(onnx_tmp, report)
        model = handoff.write_triton_repository(args.triton_repo, _triton_name(args), onnx_tmp, max_batch_size=args.triton_max_batch_size, gpu=gpu, outputs=files)
        rows.append(("triton", f"{model} (max_batch_size {args.triton_max_batch_size}, {'KIND_GPU' if gpu else 'KIND_CPU'})"))
    return rows


def _write_report(path: str, summary: dict, parity, files: Outputs) -> None:
    data = dict(summary, parity=parity.to_json() if parity is not None else None)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a file name with bytes that are not UTF-8: JSON's \\u escapes keep them
        encoded = json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False).encode("ascii")
    write_bytes(files.stage(path), encoded + b"\n")


def _run(args: argparse.Namespace, console: Console, files: Outputs) -> int:
    given = [parse_input(text) for text in args.input]
    _providers(args.providers)
    _batch_sizes(args.batch_sizes)
    _check_targets(args)
    resolve_opset(args.opset, args.exporter)  # a bad --opset fails now, not after loading
    for directory in reversed(args.import_path):  # keep the user's classes importable for the whole run (main restores)
        sys.path.insert(0, str(_real(directory)))

    start = time.perf_counter()
    console.progress(f"loading {args.model} ...")
    loaded = load_model(args.model, trust_pickle=args.trust_pickle, import_paths=args.import_path, allow_globals=args.allow_global)
    console.say(f"loaded {args.model}: {loaded.describe()} in {time.perf_counter() - start:.1f} s")
    inputs = _resolve_inputs(loaded, given)
    outputs = _outputs_of(_run_eager(loaded.module, inputs))
    shapes = ", ".join(f"{n}={_shape_text(s)}" for n, s in zip(inputs.names, inputs.shapes))
    console.say(f"inputs: {shapes} (axis 0 is the dynamic batch)")
    if args.report_image:
        from .verify.metrics import is_image_like

        if not any(is_image_like(tuple(o.shape)) for o in outputs if hasattr(o, "shape")):
            raise UsageError("--report-image: the model has no image-like output ([N, 1|3|4, H, W]) to draw")

    prepared = _rewrite(loaded.module, inputs, args.precision, console)
    rewrite = prepared.report
    ts_source = _torchscript_source(loaded, prepared, inputs) if (args.torchscript or not args.no_verify) else None
    exported = _export(args, loaded, prepared, inputs, outputs, console, files, ts_source)
    summary = {
        "tool": PROG,
        "version": __version__,
        "model": {"path": str(args.model), "kind": loaded.kind, "family": loaded.family.name if loaded.family else None,
                  "config": loaded.config, "class": type(loaded.module).__name__},  # fmt: skip
        "inputs": {n: list(s) for n, s in zip(inputs.names, inputs.shapes)},
        "rewrite": {"rewritten": [{"path": p, "rule": r} for p, r in rewrite.rewritten],
                    "near_misses": [{"path": p, "rule": r, "reason": why} for p, r, why in rewrite.near_misses],
                    "notes": [{"path": p, "rule": r, "note": note} for p, r, note in rewrite.notes]},  # fmt: skip
        "export": exported,
    }
    onnx_tmp = files.temporary(args.output)
    digest = graph_sha256(onnx_tmp)  # the graph the parity check reads; record_parity refuses any other
    kept = " and ".join(p for p in (args.output, args.torchscript) if p)
    try:
        report = None if args.no_verify else _verify(args, loaded, inputs, console, files, ts_source)
    except OutOfMemory:
        raise
    except ModconvExportError as exc:  # e.g. the model itself fails at another batch size
        files.commit()
        error(f"parity check FAILED: {kept} kept, but the check could not run: {exc}")
        return EXIT_PARITY
    if report is not None:
        record_parity(onnx_tmp, report, graph_digest=digest)
    if args.report:
        _write_report(args.report, summary, report, files)
    if report is not None and args.report_image:
        from .verify import write_report_image

        write_report_image(report, files.stage(args.report_image))
    handed = _hand_off(args, report, files)
    files.commit()  # every step succeeded (or only parity failed): all outputs replace their targets together

    verdict = "not verified (--no-verify)" if report is None else report.summary
    console.say("")
    console.say("result")
    rows = [("model", f"{args.model} ({loaded.kind}{', family ' + loaded.family.name if loaded.family else ''})"),
            ("onnx", f"{args.output} ({file_size(args.output)}, opset {exported['opset']}, {args.exporter}, batch dynamic)"),  # fmt: skip
            ("torchscript", f"{args.torchscript} ({file_size(args.torchscript)})" if args.torchscript else "-"),
            ("report", ", ".join(p for p in (args.report, args.report_image) if p) or "-"),
            *handed,
            ("parity", verdict)]  # fmt: skip
    for key, value in rows:
        console.say(f"  {key:<12} {value}")
    if report is not None and not report.passed:
        error(f"parity check FAILED: {kept} kept, but it does not match the eager model (see the table)", prefix="")
        return EXIT_PARITY
    return EXIT_OK


# -- entry point ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _restored_sys_path() -> Iterator[None]:
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def _interrupted(signal_name: str, files: Outputs) -> None:
    if files.committed:
        error(f"interrupted by {signal_name} after the outputs were written (they are complete)")
    else:
        error(f"interrupted by {signal_name} (nothing written; existing files are untouched)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    console = Console(args.verbose, args.quiet)
    files = Outputs()
    with warnings.catch_warnings(), signals_raise(), _restored_sys_path():
        if not debug:
            warnings.simplefilter("ignore")
        try:
            with files:
                return _run(args, console, files)
        except Interrupted as exc:
            _interrupted(exc.signal_name, files)
            return exc.exit_code
        except KeyboardInterrupt:  # the default SIGINT handler (a caller that replaced ours)
            _interrupted("SIGINT", files)
            return EXIT_INTERRUPTED
        except ModconvExportError as exc:
            if debug:
                traceback.print_exc()
            error(str(exc))
            return EXIT_USAGE
        except OSError as exc:  # the environment, not the user's input: a full disk, a vanished directory
            if debug:
                traceback.print_exc()
            error(f"{str(exc.filename) + ': ' if exc.filename else ''}{exc.strerror or exc}")
            return EXIT_USAGE
        except Exception as exc:
            if debug:
                traceback.print_exc()
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if is_allocation_failure(exc):
                error(f"out of memory: {type(exc).__name__}: {text[:300]}")
                return EXIT_USAGE
            error(f"internal error: {type(exc).__name__}: {text} (a bug in {PROG}: rerun with --debug and report the traceback)")
            return EXIT_INTERNAL
