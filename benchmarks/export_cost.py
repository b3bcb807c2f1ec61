"""What an export costs at the sizes users export: wall time and peak memory, ours against a stock export.

    python benchmarks/export_cost.py --json benchmarks/results/export_cost.json --markdown   # the README table
    python benchmarks/export_cost.py --models rosinality --sizes 256,1024 --kinds ours,stock
    python benchmarks/export_cost.py --quick                  # CI smoke: small models at 32 px, no CLI runs

Every measurement runs in a fresh child process (this script with ``--child``), so one measurement's
allocations never count for the next: the time is the child's own clock around the measured call (model
built and imports done before it starts), the peak is the child's ``ru_maxrss`` from ``os.wait4`` (the
per-child form of ``resource.getrusage(RUSAGE_CHILDREN)``). Kinds, per model and size:

* ``ours`` -- ``modconv_export.export_onnx(model, args, path)``: rewrite, numerical proof, ONNX with a
  dynamic batch, the file's checks;
* ``stock`` -- ``torch.onnx.export(model, args, path, dynamo=True)``: static batch 1, no rewrite, no checks;
* ``eager-bN`` -- the model's own forward at batch N (what the verification's reference run costs);
* ``cli`` -- the whole default command ``modconv-export MODEL OUT.onnx`` (export, then verification at
  batch 1 and 3 on the CPU), on a file written beforehand; its step lines are kept in the JSON.

Models (weights seeded random: cost does not depend on them), each one entry of :data:`MODELS`:
``rosinality`` -- rosinality's ``Generator(size, 512, 8, channel_multiplier=2)`` wrapped as
``z -> g([z], randomize_noise=False)[0]``, from the checkout ``MODCONV_UPSTREAM_ROSINALITY`` names (the
toolkit's own family will replace this entry); ``lats`` -- the full LATS generator on a size x size image;
``gfpgan`` -- GFPGAN v1.4 clean at output size ``size``.

Full-size measurements are heavy: each child runs under an exclusive ``flock`` on ``--lock`` (shared with
other heavy jobs on this machine), and a child whose resident memory passes ``--max-rss-gb`` is stopped
and reported as such. The JSON holds the load average before and after, as ``bench.py``'s does.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("rosinality", "lats", "gfpgan")
DEFAULT_SIZES = (256, 512, 1024)
DEFAULT_KINDS = ("ours", "stock")
#: The whole command is measured where the issue sets its goals: the sizes users export.
DEFAULT_CLI = ("rosinality:1024", "lats:256", "gfpgan:512")
DEFAULT_EAGER_BATCH = 3  # the largest batch the default verification runs
UPSTREAM_ENV = "MODCONV_UPSTREAM_ROSINALITY"


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


# ---- the models: one pluggable entry each ---------------------------------------------------------------


def _rosinality(size: int, quick: bool):
    """rosinality's Generator from the upstream checkout (its CUDA op builds stubbed out on the CPU)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "upstream_codebases"))
    from _rosinality_layout import RosinalityLayout
    from stylegan2_wrappers import rosinality

    rosinality()  # the checkout on sys.path, its CUDA op builds stubbed
    torch.manual_seed(0)
    model = RosinalityLayout(size, 64 if quick else 512, 2 if quick else 8, 1 if quick else 2).eval()
    return model, (torch.randn(1, model.style_dim),), None


def _family(name: str, size_key: str):
    def build(size: int, quick: bool):
        import torch

        from modconv_export.families import get_family

        family = get_family(name)
        config = dict(family.preset("small" if quick else "full"), **{size_key: size})
        torch.manual_seed(0)
        model = family.build(config).eval()
        return model, tuple(s.example(s.shape, seed=i) for i, s in enumerate(family.inputs(config))), config

    return build


#: name -> (builder(size, quick) -> (model, example args, family config or None), why it cannot run here or None).
#: The rosinality entry reads upstream's code until the toolkit's own rosinality family replaces it.
MODELS = {
    "rosinality": (_rosinality, lambda: None if os.environ.get(UPSTREAM_ENV) else f"set {UPSTREAM_ENV} to the rosinality checkout"),
    "lats": (_family("lats", "image_size"), lambda: None),
    "gfpgan": (_family("gfpgan", "out_size"), lambda: None),
}

#: What a command-line child needs to import upstream code: the fixture's stubs, as a sitecustomize.
_SITE = (
    f"import sys\nsys.path.insert(0, {str(ROOT / 'tests' / 'fixtures' / 'upstream_codebases')!r})\n"
    "import stylegan2_wrappers\nstylegan2_wrappers.install_stubs()\n"
)


def _model_file(name: str, size: int, quick: bool, path: Path) -> list[str]:
    """Write the model as a file the command line loads; the extra arguments it needs."""
    import torch

    model, args, config = MODELS[name][0](size, quick)
    if config is None:  # no family: a pickled module, with its code on the import path
        torch.save(model, path)
        return ["--trust-pickle", "--import-path", str(ROOT / "benchmarks"), "--import-path", os.environ[UPSTREAM_ENV],
                "--input", f"z=1x{args[0].shape[1]}"]  # fmt: skip
    from modconv_export.load.checkpoint import save_checkpoint

    save_checkpoint(path, name, config, model.state_dict())
    return []


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


def _watch(pid: int, limit_mb: float, stopped: list) -> None:
    """Stop the child when its resident memory passes ``limit_mb`` (a shared machine must not swap or OOM)."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        rss = next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VmRSS:")), 0.0)
        if rss > limit_mb:
            stopped.append(rss)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            return
        time.sleep(0.2)


def run_child(command: list[str], args: argparse.Namespace, env: dict | None = None) -> tuple[int, float, float, str, list]:
    """Run ``command`` under the lock: exit status, wall seconds, peak RSS in MB, output tail, stop record."""
    with _locked(args.lock), tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        stopped: list = []
        watcher = threading.Thread(target=_watch, args=(proc.pid, args.max_rss_gb * 1024, stopped), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the maximum over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        log.seek(0)
        tail = log.read()[-3000:]
    return proc.returncode, wall, usage.ru_maxrss / 1024, tail, stopped


def measure(model: str, size: int, kind: str, args: argparse.Namespace, workdir: Path) -> Row:
    spec = {"model": model, "size": size, "kind": kind, "quick": args.quick, "workdir": str(workdir)}
    result = workdir / "result.json"
    result.unlink(missing_ok=True)
    code, _, peak, tail, stopped = run_child([sys.executable, __file__, "--child", json.dumps(spec), "--result", str(result)], args)
    if stopped:
        return Row(model, size, kind, f"stopped: resident memory passed {args.max_rss_gb} GB", peak_mb=stopped[0])
    if code != 0 or not result.exists():
        return Row(model, size, kind, f"failed: exit {code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"[:300], peak_mb=peak)
    data = json.loads(result.read_text())
    return Row(model, size, kind, "ok", data["seconds"], peak, data["before_mb"], data["extra"])


def measure_cli(model: str, size: int, args: argparse.Namespace, workdir: Path) -> Row:
    """The whole default command on a file written by a separate child (not measured)."""
    path = workdir / f"{model}_{size}.pt"
    spec = {"model": model, "size": size, "quick": args.quick, "path": str(path)}
    code, _, _, tail, _ = run_child(
        [sys.executable, __file__, "--write-model", json.dumps(spec), "--result", str(workdir / "cli.json")], args
    )
    if code != 0:
        return Row(model, size, "cli", f"failed: writing the model: {tail.strip().splitlines()[-1] if tail.strip() else code}"[:300])
    extra = json.loads((workdir / "cli.json").read_text())["cli_args"]
    site = workdir / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "modconv_export", str(path), str(workdir / f"{model}_{size}_cli.onnx"), "-v", *extra]
    code, wall, peak, tail, stopped = run_child(command, args, env)
    steps = [
        line
        for line in tail.splitlines()
        if line.startswith("modconv-export:") or line.startswith("verified") or line.startswith("exported")
    ]
    if stopped:
        return Row(model, size, "cli", f"stopped: resident memory passed {args.max_rss_gb} GB", peak_mb=stopped[0])
    status = "ok" if code == 0 else f"failed: exit {code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"[:300]
    return Row(model, size, "cli", status, wall, peak, extra={"steps": steps[-40:]})


# ---- tables ----------------------------------------------------------------------------------------------


def _cell(row: Row | None) -> str:
    if row is None:
        return "–"
    if row.status != "ok":
        return row.status.split(":")[0]
    return f"{row.seconds:.1f} s, {row.peak_mb / 1024:.2f} GB"


def format_markdown(rows: list[Row]) -> str:
    """Per model: one line per kind, one column per size, then ours / stock and the growth 256 -> largest."""
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
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="ours, stock, eager-bN (comma-separated)")
    parser.add_argument("--cli", default=",".join(DEFAULT_CLI), help="MODEL:SIZE of the whole-command runs ('' for none)")
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
        args.result.write_text(json.dumps({"cli_args": _model_file(spec["model"], spec["size"], spec["quick"], Path(spec["path"]))}))
        return 0
    if args.quick:
        args.sizes, args.cli = "32", ""
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]}; choose from {', '.join(MODELS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    cli = [(m, int(s)) for m, _, s in (item.partition(":") for item in args.cli.split(",") if item)]

    from modconv_export.verify.environment import versions

    env = versions()
    env["load_average_before"] = list(os.getloadavg())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            reason = MODELS[model][1]()
            for size in sizes:
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "command": sys.argv, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
