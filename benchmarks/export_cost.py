"""What an export costs at the sizes users export: wall time and peak memory, ours against a stock export.

    python benchmarks/export_cost.py --json benchmarks/results/export_cost.json --markdown   # the README table
    python benchmarks/export_cost.py --models rosinality --sizes 256,1024 --kinds ours,stock
    python benchmarks/export_cost.py --models rosinality:256/512/1024,lats:128/256,gfpgan:256/512   # own sizes
    python benchmarks/export_cost.py --quick                  # CI smoke: small models at 32 px, no CLI runs

Every measurement runs in a fresh child process (this script with ``--child``), so one measurement's
allocations never count for the next: the time is the child's own clock around the measured call (model
built and imports done before it starts), the peak is the child's ``ru_maxrss`` from ``os.wait4`` (the
per-child form of ``resource.getrusage(RUSAGE_CHILDREN)``). Kinds, per model and size:

* ``ours`` -- ``export_onnx(model, args, path)``: rewrite, proofs, ONNX with a dynamic batch, checks;
* ``stock`` -- ``torch.onnx.export(model, args, path, dynamo=True)``: static batch 1, no rewrite, no checks;
* ``eager-bN`` -- the model's own forward at batch N (what the verification's reference run costs);
* ``cli`` -- the whole default command ``modconv-export MODEL OUT.onnx -v`` (export, verification at batch
  1 and 3 on the CPU) on a file written beforehand, with the peak resident memory of each step it reports
  (sampled every 0.1 s) and ``eager-b3`` beside it: the bound no step should pass.

Models (weights seeded random: cost does not depend on them), each one entry of :data:`MODELS`:
``rosinality`` -- the rosinality family's ``Generator(size, 512, 8, channel_multiplier=2)`` (upstream's
arithmetic, ``z -> image`` with its fixed noise buffers, as ``randomize_noise=False``); ``lats`` -- the full LATS generator on a size x size image;
``gfpgan`` -- GFPGAN v1.4 clean at output size ``size``.

Each child runs under an exclusive ``flock`` on ``--lock`` (heavy jobs share this machine); one whose
resident memory passes ``--max-rss-gb`` is stopped. The JSON holds the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _cost_models import MODELS, model_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("rosinality", "lats", "gfpgan")
DEFAULT_SIZES = (256, 512, 1024)
DEFAULT_KINDS = ("ours", "stock")
#: The whole command is measured where the issue sets its goals: the sizes users export.
DEFAULT_CLI = ("rosinality:1024", "lats:256", "gfpgan:512")
DEFAULT_EAGER_BATCH = 3  # the largest batch the default verification runs


@dataclass
class Row:
    model: str
    size: int
    kind: str
    status: str  # "ok", "skipped: why", "failed: why", "stopped: why"
    seconds: float | None = None
    peak_mb: float | None = None  # ru_maxrss of the child: model, imports and the measured call
    before_mb: float | None = None  # the child's resident memory when the measured call started
    extra: dict = field(default_factory=dict)


# ---- the child: one measurement ------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict) -> dict:
    """Build the model, then time the one call ``spec["kind"]`` names."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    model, args, _ = MODELS[spec["model"]][0](spec["size"], spec["quick"])
    out = Path(spec["workdir"]) / f"{spec['model']}_{spec['size']}_{spec['kind']}.onnx"
    before = _rss_mb()
    start = time.perf_counter()
    if spec["kind"] == "ours":
        from modconv_export import export_onnx

        export_onnx(model, args, out)
    elif spec["kind"] == "stock":
        torch.onnx.export(model, args, str(out), dynamo=True, verbose=False)
    elif spec["kind"].startswith("eager-b"):
        batch = int(spec["kind"][len("eager-b") :])
        with torch.no_grad():
            model(*(a.expand(batch, *a.shape[1:]).contiguous() for a in args))
    else:
        raise ValueError(f"unknown kind {spec['kind']}")
    seconds = time.perf_counter() - start
    size_mb = out.stat().st_size / 2**20 if out.exists() else None
    return {"seconds": seconds, "before_mb": before, "extra": {"file_mb": size_mb} if size_mb else {}}


# ---- the parent: children under the lock, their peaks --------------------------------------------------


@contextlib.contextmanager
def _locked(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class _Watch:
    """What the watcher saw of a child: the output lines as they came (with the peak resident memory
    since the line before), and whether it had to stop the child."""

    lines: list = field(default_factory=list)  # (seconds since start, line, peak MB until the next line)
    stopped: float | None = None


def _rss_of(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VmRSS:")), 0.0)


def _watch(pid: int, log_path: str, limit_mb: float, start: float, seen: _Watch) -> None:
    """Sample the child's resident memory every 0.1 s and attribute it to the output line it printed
    last; stop the child when it passes ``limit_mb`` (a shared machine must not swap or OOM)."""
    current = [0.0, "(start)", 0.0]
    with open(log_path, errors="replace") as log:
        while (rss := _rss_of(pid)) is not None:
            for line in log.read().splitlines():
                seen.lines.append(tuple(current))
                current = [time.perf_counter() - start, line, rss]
            current[2] = max(current[2], rss)
            if rss > limit_mb:
                seen.stopped = rss
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                break
            time.sleep(0.1)
        seen.lines.append(tuple(current))


def run_child(command: list[str], args: argparse.Namespace, env: dict | None = None) -> tuple[int, float, float, str, _Watch]:
    """Run ``command`` under the lock: exit status, wall seconds, peak RSS in MB, output tail, what the watcher saw."""
    with _locked(args.lock), tempfile.NamedTemporaryFile(mode="w+", suffix=".log") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        seen = _Watch()
        watcher = threading.Thread(target=_watch, args=(proc.pid, log.name, args.max_rss_gb * 1024, start, seen), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the maximum over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        watcher.join(5)
        log.seek(0)
        tail = log.read()[-3000:]
    return proc.returncode, wall, usage.ru_maxrss / 1024, tail, seen


def _last_line(tail: str) -> str:
    return tail.strip().splitlines()[-1] if tail.strip() else ""


def measure(model: str, size: int, kind: str, args: argparse.Namespace, workdir: Path) -> Row:
    spec = {"model": model, "size": size, "kind": kind, "quick": args.quick, "workdir": str(workdir)}
    result = workdir / "result.json"
    result.unlink(missing_ok=True)
    code, _, peak, tail, seen = run_child([sys.executable, __file__, "--child", json.dumps(spec), "--result", str(result)], args)
    if seen.stopped:
        return Row(model, size, kind, f"stopped: resident memory passed {args.max_rss_gb} GB", peak_mb=seen.stopped)
    if code != 0 or not result.exists():
        return Row(model, size, kind, f"failed: exit {code}: {_last_line(tail)}"[:300], peak_mb=peak)
    data = json.loads(result.read_text())
    return Row(model, size, kind, "ok", data["seconds"], peak, data["before_mb"], data["extra"])


#: A progress line of the command (``modconv-export: [  12.3 s] rewrite: ...``) and its step.
_STEP = re.compile(r"^modconv-export: \[\s*[\d.]+ s\] (.*)$")


def measure_cli(model: str, size: int, args: argparse.Namespace, workdir: Path) -> Row:
    """The whole default command on a file written by a separate child (not measured), with the peak
    resident memory of each step it reported (``-v``: its progress lines) and the eager forward pass at
    the largest verified batch beside it, the bound no step should pass."""
    path = workdir / f"{model}_{size}.pt"
    spec = {"model": model, "size": size, "quick": args.quick, "path": str(path)}
    code, _, _, tail, _ = run_child(
        [sys.executable, __file__, "--write-model", json.dumps(spec), "--result", str(workdir / "cli.json")], args
    )
    if code != 0:
        return Row(model, size, "cli", f"failed: writing the model: {_last_line(tail) or code}"[:300])
    extra = json.loads((workdir / "cli.json").read_text())["cli_args"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "modconv_export", str(path), str(workdir / f"{model}_{size}_cli.onnx"), "-v", *extra]
    code, wall, peak, tail, seen = run_child(command, args, env)
    if seen.stopped:
        return Row(model, size, "cli", f"stopped: resident memory passed {args.max_rss_gb} GB", peak_mb=seen.stopped)
    steps = [{"at_s": round(at, 1), "step": m.group(1), "peak_mb": round(mb)} for at, line, mb in seen.lines if (m := _STEP.match(line))]
    eager = measure(model, size, f"eager-b{DEFAULT_EAGER_BATCH}", args, workdir)
    largest = max(steps, key=lambda s: s["peak_mb"], default=None)
    status = "ok" if code == 0 else f"failed: exit {code}: {_last_line(tail)}"[:300]
    return Row(model, size, "cli", status, wall, peak, extra={
        "steps": steps, "largest_step": largest, "verified": [line for line in tail.splitlines() if line.startswith(("PASSED", "FAILED"))],
        f"eager_b{DEFAULT_EAGER_BATCH}": asdict(eager),
    })  # fmt: skip


# ---- tables ----------------------------------------------------------------------------------------------


def _cell(row: Row | None) -> str:
    if row is None:
        return "–"
    if row.status != "ok":
        return row.status.split(":")[0]
    return f"{row.seconds:.1f} s, {row.peak_mb / 1024:.2f} GB"


def format_cli_markdown(rows: list[Row]) -> str:
    """The whole command per model: its time and peak, its largest step, the eager forward beside it."""
    key = f"eager_b{DEFAULT_EAGER_BATCH}"
    lines = [f"| model | command (export + verification) | largest step | eager forward at batch {DEFAULT_EAGER_BATCH} | largest step / eager |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        eager = Row(**row.extra[key]) if key in row.extra else None
        step = row.extra.get("largest_step")
        if row.status != "ok" or eager is None or eager.status != "ok" or not step:
            lines.append(f"| {row.model} {row.size} px | {row.status} | – | {_cell(eager)} | – |")
            continue
        lines.append(f"| {row.model} {row.size} px | {_cell(row)} | {step['step']}: {step['peak_mb'] / 1024:.2f} GB | {_cell(eager)} | "
                     f"{step['peak_mb'] / eager.peak_mb:.2f} |")  # fmt: skip
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    """Per model: one line per kind, one column per size, then ours / stock and the growth 256 -> largest."""
    rows = [r for r in rows if r.kind != "cli"]
    if not rows:
        return ""
    sizes = sorted({r.size for r in rows})
    lines = [f"| model | measured | {' | '.join(f'{s} px' for s in sizes)} | growth {sizes[0]} → {sizes[-1]} px |",
             "|---|---|" + "---|" * (len(sizes) + 1)]  # fmt: skip
    by_key = {(r.model, r.kind, r.size): r for r in rows}
    for model in dict.fromkeys(r.model for r in rows):
        kinds = list(dict.fromkeys(r.kind for r in rows if r.model == model))
        for kind in kinds:
            cells = [by_key.get((model, kind, s)) for s in sizes]
            ok = [c for c in cells if c is not None and c.status == "ok"]
            growth = f"time × {ok[-1].seconds / ok[0].seconds:.1f}, memory × {ok[-1].peak_mb / ok[0].peak_mb:.1f}" if len(ok) > 1 else "–"
            lines.append(f"| {model} | {kind} | {' | '.join(_cell(c) for c in cells)} | {growth} |")
        if "ours" in kinds and "stock" in kinds:
            ratios = []
            for s in sizes:
                ours, stock = by_key.get((model, "ours", s)), by_key.get((model, "stock", s))
                if ours and stock and ours.status == stock.status == "ok":
                    ratios.append(f"time × {ours.seconds / stock.seconds:.2f}, memory × {ours.peak_mb / stock.peak_mb:.2f}")
                else:
                    ratios.append("–")
            lines.append(f"| {model} | **ours / stock** | {' | '.join(ratios)} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}; MODEL:S1/S2 gives that model its own sizes")  # fmt: skip
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="ours, stock, eager-bN (comma-separated)")
    parser.add_argument("--cli", default=None, help=f"MODEL:SIZE of the whole-command runs ('' for none; default {','.join(DEFAULT_CLI)})")
    parser.add_argument("--quick", action="store_true", help="small presets at 32 px, ours and stock, no CLI run: a smoke test")
    parser.add_argument("--lock", default="/tmp/modconv-heavy.lock", help="flock file every child runs under ('' for none)")
    parser.add_argument("--max-rss-gb", type=float, default=16.0, help="stop a child whose resident memory passes this")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--write-model", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.result.write_text(json.dumps(child(json.loads(args.child))))
        return 0
    if args.write_model:
        spec = json.loads(args.write_model)
        args.result.write_text(json.dumps({"cli_args": model_file(spec["model"], spec["size"], spec["quick"], Path(spec["path"]))}))
        return 0
    if args.quick:
        args.sizes = "32"
    if args.cli is None:
        args.cli = "" if args.quick else ",".join(DEFAULT_CLI)
    sizes = [int(s) for s in args.sizes.split(",")]
    models = {
        m: [int(s) for s in own.split("/")] if own else sizes for m, _, own in (i.partition(":") for i in args.models.split(",") if i)
    }
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]}; choose from {', '.join(MODELS)}")
    kinds = [k for k in args.kinds.split(",") if k]
    cli = [(m, int(s)) for m, _, s in (item.partition(":") for item in args.cli.split(",") if item)]

    from modconv_export.verify.environment import versions

    env = versions()
    env["load_average_before"] = list(os.getloadavg())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, model_sizes in models.items():
            reason = MODELS[model][1]()
            for size in model_sizes:
                for kind in kinds:
                    row = Row(model, size, kind, f"skipped: {reason}") if reason else measure(model, size, kind, args, Path(tmp))
                    rows.append(row)
                    print(f"{model:>10} {size:>5} px {kind:>8}: {_cell(row)}  {row.status if row.status != 'ok' else ''}", flush=True)
        for model, size in cli:
            reason = MODELS[model][1]()
            row = Row(model, size, "cli", f"skipped: {reason}") if reason else measure_cli(model, size, args, Path(tmp))
            rows.append(row)
            print(f"{model:>10} {size:>5} px      cli: {_cell(row)}  {row.status if row.status != 'ok' else ''}", flush=True)
    env["load_average_after"] = list(os.getloadavg())
    print(f"load average before {env['load_average_before'][0]:.2f}, after {env['load_average_after'][0]:.2f}")
    if args.markdown:
        print(format_markdown(rows))
        if any(r.kind == "cli" for r in rows):
            print()
            print(format_cli_markdown([r for r in rows if r.kind == "cli"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "command": sys.argv, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
