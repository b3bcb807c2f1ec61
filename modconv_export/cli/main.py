"""``modconv-export MODEL OUT.onnx``: load -> rewrite -> export -> verify from the shell.

Every mistake the user can make is one line on stderr (``modconv-export: error: ...``) and exit 2,
never a traceback (``--debug`` shows it) and never a half-written file: the outputs of a run are one
transaction (:class:`~modconv_export._util.files.Outputs`), renamed into place together after every step
succeeded, and every output directory is checked before the slow export starts. A parity failure is
exit 1: the files stay, the table says why. Signals: see :mod:`modconv_export._util.interrupts`.
torch is imported only once the options and the model file have passed every check that needs none, so
``--help``, ``--version`` and a usage error answer at once.

Step results and the result table go to stdout; live progress for the slow steps goes to stderr only
on a terminal (or with ``-v``), so a script's stderr holds nothing but the error line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .._util import exception_line
from .._util.files import Outputs
from .._util.interrupts import Interrupted, deferred, signals_raise
from .._util.memory import is_allocation_failure
from .._util.progress import reporting
from ..errors import ModconvExportError, OutOfMemory, UsageError
from .arguments import (
    arch_options,
    build_parser,
    check_targets,
    choose_providers,
    generator_options,
    parse_batch_sizes,
    parse_input,
    parse_providers,
    real_path,
    shape_text,
)
from .console import PROG, Console, error, file_size

if TYPE_CHECKING:
    from ..load.options import GeneratorOptions

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARITY", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_PARITY, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _checked(args: argparse.Namespace, console: Console, files: Outputs) -> tuple[list, GeneratorOptions, dict]:
    """Every check that needs no torch -- the options, the model file's format, the outputs' folders -- so a
    mistake is answered at once (the folders a later error leaves behind are removed by ``files``)."""
    from ..load.files import check_model_file

    given = [parse_input(text) for text in args.input]
    parse_providers(args.providers)
    parse_batch_sizes(args.batch_sizes)
    generator = generator_options(args)
    if args.exporter == "torchscript":
        console.say("note: --exporter torchscript is now called --exporter legacy (torch.onnx's TorchScript-based exporter)")
        args.exporter = "legacy"
    check_model_file(args.model)
    check_targets(args, files)
    return given, generator, arch_options(args)


def _run(args: argparse.Namespace, console: Console, files: Outputs) -> int:
    given, generator, arch = _checked(args, console, files)
    # torch and the exporters, seconds of imports: a signal meanwhile is raised when they are done, so no
    # extension module is left half-initialised (an interrupted torch import aborts the interpreter at exit)
    with deferred():
        import torch  # noqa: F401

        from ..export import resolve_opset
        from ..export.metadata import graph_sha256
        from ..load import load_model
        from ..verify.record import record_parity
        from . import steps
        from .inputs import outputs_of, resolve_inputs, run_eager

    resolve_opset(args.opset, args.exporter)  # a bad --opset fails now, not after loading
    if not args.no_verify:
        choose_providers(args, console)  # what the user named runs here, or the run ends now
    for directory in reversed(args.import_path):  # keep the user's classes importable for the whole run (main restores)
        sys.path.insert(0, str(real_path(directory)))

    start = time.perf_counter()
    console.progress(f"loading {args.model} ...")
    loaded = load_model(
        args.model,
        trust_pickle=args.trust_pickle,
        import_paths=args.import_path,
        allow_globals=args.allow_global,
        generator=generator,
        **arch,
    )
    console.say(f"loaded {args.model}: {loaded.describe()} in {time.perf_counter() - start:.1f} s")
    for note in loaded.notes:  # e.g. which checkout files an NVlabs pickle's classes came from
        console.say(f"  note: {note}")
    inputs = resolve_inputs(loaded, given)
    outputs = outputs_of(run_eager(loaded.module, inputs))
    shapes = ", ".join(f"{n}={shape_text(s)}" for n, s in zip(inputs.names, inputs.shapes))
    console.say(f"inputs: {shapes} (axis 0 is the dynamic batch)")
    if args.report_image:
        from ..verify.metrics import is_image_like

        if not any(is_image_like(tuple(o.shape)) for o in outputs if hasattr(o, "shape")):
            raise UsageError("--report-image: the model has no image-like output ([N, 1|3|4, H, W]) to draw")

    prepared = steps.rewrite(loaded.module, inputs, args.precision, console)
    rewrite = prepared.report
    ts_source = steps.torchscript_source(loaded, prepared, inputs) if (args.torchscript or not args.no_verify) else None
    exported = steps.export(args, loaded, prepared, inputs, outputs, console, files, ts_source)
    summary = steps.summary(args, loaded, inputs, rewrite, exported)
    onnx_tmp = files.staged(args.output)
    digest = graph_sha256(onnx_tmp)  # the graph the parity check reads; record_parity refuses any other
    kept = " and ".join(p for p in (args.output, args.torchscript) if p)
    try:
        report = None if args.no_verify else steps.verify(args, loaded, inputs, console, files, ts_source)
    except OutOfMemory:
        raise
    except ModconvExportError as exc:  # e.g. the model itself fails at another batch size
        files.commit()
        error(f"parity check FAILED: {kept} kept, but the check could not run: {exc}")
        return EXIT_PARITY
    if report is not None:
        record_parity(onnx_tmp, report, graph_digest=digest)
    if args.report:
        written = {"onnx": onnx_tmp, "torchscript": files.temporary(args.torchscript) if args.torchscript else None}
        steps.write_report(args.report, summary, report, files, written)
    if report is not None and args.report_image:
        from ..verify import write_report_image

        write_report_image(report, files.stage(args.report_image))
    handed = steps.hand_off(args, report, files)
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
            with files, reporting(console.step):
                try:
                    return _run(args, console, files)
                finally:
                    console.close()  # a redrawn progress line ends before any error line
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
            if is_allocation_failure(exc):
                error(f"out of memory: {exception_line(exc)}")
                return EXIT_USAGE
            error(f"internal error: {exception_line(exc)} (a bug in {PROG}: rerun with --debug and report the traceback)")
            return EXIT_INTERNAL
