"""The run's steps, each printing its one result line: rewrite, export (ONNX, TorchScript), verify,
hand-off, and the JSON report. Every file goes through the run's :class:`Outputs` transaction."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import TYPE_CHECKING

import torch

from .. import __version__
from .._util.files import Outputs, file_sha256, write_bytes
from ..errors import ExportError
from ..export import Prepared, export_onnx, export_torchscript, prepare_export, resolve_opset
from ..export.metadata import family_properties
from ..load import LoadedModel
from ..rewrite import registered_rules
from ..rewrite.diagnose import describe_export_failure
from ..rewrite.graph import GRAPH_RULES
from .arguments import parse_batch_sizes, parse_providers, triton_kind, triton_name
from .console import PROG, Console, captured_fds, plural
from .inputs import Inputs

if TYPE_CHECKING:
    from ..verify import ParityOptions

__all__ = ["REPORT_SCHEMA", "export", "hand_off", "parity_options", "rewrite", "summary", "torchscript_source", "verify", "write_report"]


def rewrite(module: torch.nn.Module, inputs: Inputs, precision: str, console: Console) -> Prepared:
    console.progress("rewriting (module rules, then the traced graph) ...")
    with captured_fds(keep=False):
        prepared = prepare_export(module, inputs.tensors, precision=precision)
    report = prepared.report
    if report is None:  # prepare_export with its rewrite always reports
        raise RuntimeError("the rewrite gave no report")
    counts = report.counts()
    graph_rules = set(GRAPH_RULES.values())
    module_counts = {n: c for n, c in counts.items() if n not in graph_rules}
    # the rules that matched, in the order they ran (folds, then layers)
    detail = ", ".join(f"{r.name}: {module_counts[r.name]}" for r in registered_rules() if r.name in module_counts)
    console.say(f"rewrote {sum(module_counts.values())} modules" + (f" ({detail})" if detail else ""))
    convs, demods = counts.get(GRAPH_RULES["conv"], 0), counts.get(GRAPH_RULES["demod"], 0)
    if convs:
        console.say(f"rewrote {plural(convs, 'batch-grouped convolution', 'batch-grouped convolutions')} in the traced graph"
                    f" ({plural(demods, 'demodulation', 'demodulations')} computed from the style)")  # fmt: skip
    else:
        left = "the module rules rewrote every layer" if module_counts else "the model has none"
        console.say(f"traced graph: no batch-grouped convolution left to rewrite ({left})")
    for done in report.rewritten:
        console.detail(f"  {done.path or '<root>'} -> {done.rule}")
    for line in report.describe_notes():  # e.g. how noise injection was made deterministic
        console.say(f"  note: {line}")
    if report.near_misses:
        if console.verbose:
            for line in report.describe_near_misses():
                console.detail(f"  near miss: {line}")
        else:
            console.say(f"  {plural(len(report.near_misses), 'near miss', 'near misses')} left as they are (-v shows why)")
    return prepared


def torchscript_source(loaded: LoadedModel, prepared: Prepared, inputs: Inputs) -> torch.nn.Module:
    """The float32 form without ONNX lowerings that the TorchScript file (and the eager row) is made from:
    the ONNX one when it is that already, else a second rewrite."""
    if prepared.fp32 is not None and not getattr(prepared.fp32, "lowerings", None):
        return prepared.fp32
    with captured_fds(keep=False):
        return prepare_export(loaded.module, inputs.tensors, lowerings=False).module


def export(
    args: argparse.Namespace,
    loaded: LoadedModel,
    prepared: Prepared,
    inputs: Inputs,
    outputs: list,
    console: Console,
    files: Outputs,
    ts_source,
) -> dict:
    exportable, rewrite = prepared.module, prepared.report
    misses_of = [miss.path for miss in rewrite.near_misses] if rewrite is not None else []
    opset = resolve_opset(args.opset, args.exporter)
    family_outputs = list(loaded.family.outputs) if loaded.family and len(loaded.family.outputs) == len(outputs) else None
    console.progress(f"exporting {args.output} ({args.exporter} exporter, opset {opset}) ...")
    start = time.perf_counter()
    onnx_tmp = files.stage(args.output)
    with captured_fds(keep=args.debug):
        try:
            export_onnx(exportable, inputs.tensors, onnx_tmp, exporter=args.exporter, opset=opset, rewrite=False,
                        input_names=inputs.names, output_names=family_outputs, precision=args.precision,
                        keep_debug_metadata=args.keep_debug_metadata, metadata=family_properties(loaded.family, inputs.names))  # fmt: skip
        except ExportError as exc:
            misses = misses_of
            better = (
                describe_export_failure(prepared.source or exportable, inputs.tensors, exc.__cause__, args.exporter, misses)
                if exc.__cause__
                else None
            )
            if misses:  # an unrewritten look-alike is the usual reason a generator does not export
                listed = ", ".join(p or "<root>" for p in misses[:3])
                better = (
                    f"{better or exc}; note: {plural(len(misses), 'near miss', 'near misses')} left unrewritten ({listed}; -v shows why)"
                )
            if better is None:
                raise
            raise ExportError(better) from exc
    seconds = time.perf_counter() - start
    console.say(f"exported {args.output} ({args.exporter} exporter, opset {opset}, {args.precision}, dynamic batch) in {seconds:.1f} s")
    info = {
        "onnx": str(args.output),
        "exporter": args.exporter,
        "opset": opset,
        "precision": args.precision,
        "seconds": round(seconds, 3),
        "torchscript": None,
    }
    if args.torchscript:
        console.progress(f"writing TorchScript {args.torchscript} ...")
        start = time.perf_counter()
        ts_tmp = files.stage(args.torchscript)
        with captured_fds(keep=args.debug):
            export_torchscript(ts_source, inputs.tensors, ts_tmp, rewrite=False, check=args.no_verify)  # else verify checks it
        console.say(f"wrote TorchScript {args.torchscript} in {time.perf_counter() - start:.1f} s")
        info["torchscript"] = str(args.torchscript)
    return info


def parity_options(args: argparse.Namespace, inputs: Inputs, files: Outputs) -> ParityOptions:
    """What the run's parity check does, from the arguments: this run's own files (the temporaries), whatever
    another run writes to the same names meanwhile, and the inputs' own distributions when they have specs."""
    from ..verify import ParityOptions

    make = None
    if inputs.specs:
        specs, dims = inputs.specs, inputs.shapes

        def make(batch: int, seed: int) -> tuple:
            return tuple(s.example((batch, *d[1:]), seed=seed + i) for i, (s, d) in enumerate(zip(specs, dims)))

    return ParityOptions(
        onnx_path=files.temporary(args.output),
        torchscript_path=files.temporary(args.torchscript) if args.torchscript else None,
        trace_torchscript=not args.torchscript,
        providers=parse_providers(args.providers),
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        precision=args.precision,
        rtol=args.rtol,
        atol=args.atol,
        max_rel_l2=args.max_rel_l2,
        make_inputs=make,
    )


def verify(
    args: argparse.Namespace, loaded: LoadedModel, inputs: Inputs, console: Console, files: Outputs, exportable: torch.nn.Module | None
):
    """Check this run's own files against the loaded model, with the options of :func:`parity_options`."""
    from ..verify import check_parity

    options = parity_options(args, inputs, files)
    console.progress("verifying against eager PyTorch ...")
    start = time.perf_counter()
    with captured_fds(keep=args.debug):
        report = check_parity(loaded.module, inputs.tensors, options, exportable=exportable)
    report.files = {"onnx": str(args.output), "torchscript": str(args.torchscript) if args.torchscript else None}
    console.say(f"verified in {time.perf_counter() - start:.1f} s")
    console.say(report.format_table())
    return report


def hand_off(args: argparse.Namespace, report, files: Outputs) -> list[tuple[str, str]]:
    """Polygraphy data and the Triton repository, from the finished (verified and recorded) file."""
    from .. import handoff

    rows = []
    onnx_tmp = files.staged(args.output)
    if args.save_inputs or args.save_outputs:
        staged = [files.stage(p) if p else None for p in (args.save_inputs, args.save_outputs)]
        handoff.save_parity_data(report, onnx_tmp, *staged)
        rows.append(("polygraphy", ", ".join(p for p in (args.save_inputs, args.save_outputs) if p)))
    if args.triton_repo:
        kind = triton_kind(args)
        model = handoff.write_triton_repository(
            args.triton_repo, triton_name(args), onnx_tmp, max_batch_size=args.triton_max_batch_size, kind=kind, outputs=files
        )
        rows.append(("triton", f"{model} (max_batch_size {args.triton_max_batch_size}, {kind or 'instances placed by Triton'})"))
    return rows


#: The JSON report's layout; raised when a key changes meaning or goes away (added keys keep it).
REPORT_SCHEMA = 1


def write_report(path: str, summary: dict, parity, files: Outputs, written: dict) -> None:
    """The JSON report: the run (``summary``) with the SHA-256 of the model file and of each file as
    written (``written``: ``"onnx"``/``"torchscript"`` -> the staged file the parity check judged), then
    the parity rows."""
    hashes = {f"{key}_sha256": file_sha256(p) if p else None for key, p in written.items()}
    data = dict(
        summary,
        model={**summary["model"], "sha256": file_sha256(summary["model"]["path"])},
        export={**summary["export"], **hashes},
        parity=parity.to_json() if parity is not None else None,
    )
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a file name with bytes that are not UTF-8: JSON's \\u escapes keep them
        encoded = json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False).encode("ascii")
    write_bytes(files.stage(path), encoded + b"\n")


def summary(args: argparse.Namespace, loaded: LoadedModel, inputs: Inputs, rewrite, exported: dict) -> dict:
    """The JSON report's account of the run, before the parity rows are added."""
    return {
        "schema_version": REPORT_SCHEMA,
        "tool": PROG,
        "version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {
            "path": str(args.model),
            "kind": loaded.kind,
            "family": loaded.family.name if loaded.family else None,
            "config": loaded.config,
            "class": type(loaded.module).__name__,
            "notes": list(loaded.notes),
        },  # fmt: skip
        "inputs": {n: list(s) for n, s in zip(inputs.names, inputs.shapes)},
        "rewrite": {
            "rewritten": [done.to_json() for done in rewrite.rewritten],
            "near_misses": [miss.to_json() for miss in rewrite.near_misses],
            "notes": [note.to_json() for note in rewrite.notes],
        },  # fmt: skip
        "export": exported,
    }
