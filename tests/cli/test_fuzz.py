"""Fuzzing the command line as a hostile and careless user would, with the numbers the project reports.

Seeded random cases in every class the toolkit promises to survive: hostile pickles, damaged and
non-regular model files, odd paths and option values, signals at random moments, full disks, two
runs writing the same file, and resource bombs (refused within seconds and without the memory they ask for). Every case must end cleanly -- exit 0, 1, 2 or 128 + signal, with stderr
empty or one ``modconv-export:`` line and never a traceback -- must lose no data (each target is its
old content or a complete new file, no temporary left) and must run no pickled code (no marker).
The last test prints the totals (``pytest -s`` shows them; they are also written to
``fuzz-summary.json`` in the test's temporary directory).
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn

from modconv_export.cli import main
from modconv_export.families import get_family

import nvlabs_pickles
from cli_inputs import CONFIG, FOREIGN_LAYERS, write_cli_inputs
from helpers import FIXTURES, patch_file_writes
from pickle_payloads import Attr, Build, Call, G, NewObj, StackGlobal, deep, legacy_bomb, plain_pickle, save, tensor, zip_bomb

USER_CODE = FIXTURES / "user_code"
FAST = ["--exporter", "legacy", "--providers", "cpu"]
CLEAN_CODES = {0, 1, 2, 129, 130, 143}
TEMP_SUFFIXES = (".partial", ".probe", ".old")

TOTALS: collections.Counter = collections.Counter(
    {"clean exits": 0, "tracebacks": 0, "data lost or partial": 0, "pickle code executions": 0}
)
PROBLEMS: list[str] = []


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_cli_inputs(tmp_path_factory.mktemp("fuzz"))


# -- judging one case ------------------------------------------------------------------------------------


def _complete(path: Path) -> bool:
    data = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".onnx"):
            onnx.checker.check_model(onnx.load_from_string(data))
        elif name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".png"):
            return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
        elif name.endswith(".ts"):
            return zipfile.is_zipfile(path) and zipfile.ZipFile(path).testzip() is None
    except Exception:
        return False
    return True


def judge(kind: str, code: int, stderr: str, before: dict[Path, bytes | None], dirs: list[Path], markers: list[Path] = ()) -> None:
    """Count one case and record what broke a promise."""
    TOTALS["cases"] += 1
    TOTALS[f"cases: {kind}"] += 1
    lines = stderr.strip().splitlines()
    clean = code in CLEAN_CODES and (len(lines) == 1 and lines[0].startswith("modconv-export: ") if code else not lines)
    TOTALS["clean exits"] += clean
    if "Traceback" in stderr:
        TOTALS["tracebacks"] += 1
    if not clean:
        PROBLEMS.append(f"{kind}: exit {code}, stderr {stderr[-400:]!r}")
    for path, old in before.items():
        now = path.read_bytes() if path.is_file() else None
        if now != old and not (code in (0, 1, 129, 130, 143) and now is not None and _complete(path)):
            TOTALS["data lost or partial"] += 1
            PROBLEMS.append(f"{kind}: {path.name} changed to something incomplete (exit {code})")
    leftovers = [p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.name.endswith(TEMP_SUFFIXES)]
    if leftovers:
        TOTALS["data lost or partial"] += 1
        PROBLEMS.append(f"{kind}: temporaries left: {leftovers}")
    ran = [m for m in markers if m.exists()]
    TOTALS["pickle code executions"] += len(ran)
    if ran:
        PROBLEMS.append(f"{kind}: pickled code ran ({ran[0].name})")


def run_main(argv: list[str], capfd) -> tuple[int, str]:
    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err


def targets(d: Path, rng: random.Random, base: Path) -> dict[str, Path]:
    """OUT and the optional outputs in ``d``, some of them holding an older file."""
    paths = {"OUT": d / "g.onnx", "--torchscript": d / "g.ts", "--report": d / "g.json"}
    for option, path in paths.items():
        if rng.random() < 0.5:
            path.write_bytes((base / "old.onnx").read_bytes() if option == "OUT" else b"older " + option.encode())
    return paths


def snapshot(paths) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.is_file() else None for p in paths}


# -- 1. hostile pickles ----------------------------------------------------------------------------------

#: dangerous callables: (module, name, arguments given the marker path)
SINKS = [
    ("os", "system", lambda m: (f"touch {m}",)),
    ("posix", "system", lambda m: (f"touch {m}",)),
    ("subprocess", "call", lambda m: (["touch", str(m)],)),
    ("builtins", "eval", lambda m: (f"open({str(m)!r}, 'w').close()",)),
    ("builtins", "exec", lambda m: (f"open({str(m)!r}, 'w').close()",)),
    ("builtins", "open", lambda m: (str(m), "w")),
    ("pydoc", "pipepager", lambda m: ("x", f"touch {m}")),
    ("timeit", "timeit", lambda m: ("pass", f"open({str(m)!r}, 'w').close()")),
    ("torch", "save", lambda m: (1, str(m))),
    ("torch", "from_file", lambda m: (str(m), True, 1)),
    ("logging", "FileHandler", lambda m: (str(m),)),
    ("numpy", "savetxt", lambda m: (str(m), [1.0])),
]


def _hostile(rng: random.Random, marker: Path) -> tuple[object, int]:
    module, name, args = rng.choice(SINKS)
    how = rng.choice(["direct", "getattr", "stack_global", "nested_pickle", "build_setstate", "user_reduce", "torch_getattr"])
    protocol = 2
    if how == "direct":
        payload = Call(G(module, name), *args(marker))
    elif how == "getattr":
        payload = Call(Attr(Call(G("importlib", "import_module"), module), name), *args(marker))
    elif how == "stack_global":
        payload, protocol = (
            Call(
                StackGlobal(rng.choice(["torch.serialization", "torch._utils_internal", module]), name if module != "os" else "os.system"),
                *args(marker),
            ),
            4,
        )
    elif how == "nested_pickle":
        payload = Call(G("pickle", "loads"), plain_pickle(Call(G(module, name), *args(marker))))
    elif how == "build_setstate":
        payload = Build(Build(NewObj(G("user_code_layers", "Helper")), {"__setstate__": G(module, name)}), args(marker)[0])
    elif how == "user_reduce":
        payload = Call(G("user_code_layers", "Recorder"), str(marker))
    else:
        payload = Call(Attr(G("torch._C", "_VariableFunctionsClass"), "from_file"), str(marker), True, 1)
    torch.manual_seed(rng.randrange(100))
    where = rng.choice(["top", "dict", "state_dict", "list", "module_attr"])
    if where == "dict":
        return {"model": payload, "epoch": 3}, protocol
    if where == "state_dict":
        return {**nn.Linear(3, 3).state_dict(), "extra": payload}, protocol
    if where == "list":
        return [torch.zeros(2), payload], protocol
    if where == "module_attr":
        return {"net": nn.Sequential(nn.Linear(2, 2)), "hook": payload}, protocol
    return payload, protocol


def test_fuzz_hostile_pickles(base, tmp_path, capfd):
    rng = random.Random(1101)
    for i in range(120):
        d = tmp_path / f"p{i}"
        d.mkdir()
        marker = d / "marker"
        obj, protocol = _hostile(rng, marker)
        model = save(obj, d / "m.pt", legacy=rng.random() < 0.3, protocol=protocol)
        paths = targets(d, rng, base)
        before = snapshot(paths.values())
        argv = [str(model), str(paths["OUT"]), "--trust-pickle", "--import-path", str(USER_CODE), "--no-verify", *FAST]
        if rng.random() < 0.3:
            argv = argv[:2] + argv[5:]  # without trust
        code, err = run_main(argv, capfd)
        judge("hostile pickle", code, err, before, [d], [marker])
        if code != 2:
            PROBLEMS.append(f"hostile pickle {i}: exit {code}, expected 2")


# -- 2. damaged and non-regular model files --------------------------------------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    how = rng.choice(["flip", "flips", "truncate", "insert", "zero", "append"])
    if how == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "flips":
        for _ in range(rng.randrange(2, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == "truncate":
        del data[rng.randrange(1, len(data)) :]
    elif how == "insert":
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif how == "zero":
        at = rng.randrange(len(data))
        data[at : at + rng.randrange(1, 512)] = b"\0" * len(data[at : at + 512])
    else:
        data += os.urandom(rng.randrange(1, 256))
    return bytes(data)


def test_fuzz_damaged_and_odd_model_files(base, tmp_path, capfd):
    rng = random.Random(2202)
    sources = {"dec.pt": [], "legacy_sd.pt": [], "module.pt": ["--trust-pickle", "--import-path", str(FOREIGN_LAYERS), "--input", "x=1x5"]}
    odd = tmp_path / "odd"
    odd.mkdir()
    os.mkfifo(odd / "fifo.pt")
    (odd / "dir.pt").mkdir()
    (odd / "loop.pt").symlink_to(odd / "loop.pt")
    (odd / "dangling.pt").symlink_to(odd / "nowhere.pt")
    (odd / "empty.pt").write_bytes(b"")
    (odd / "text.pt").write_text("weights\n")
    (odd / "random.pt").write_bytes(os.urandom(4096))
    specials = [*(str(p) for p in sorted(odd.iterdir())), "/dev/null", "/dev/zero", "/dev/urandom", "/proc/self/mem", "/"]
    cases = [("special", s, []) for s in specials] + [
        ("damaged", name, opts) for name in sources for opts in [sources[name]] for _ in range(20)
    ]
    for i, (kind, source, opts) in enumerate(cases):
        d = tmp_path / f"f{i}"
        d.mkdir()
        if kind == "damaged":
            model = d / "m.pt"
            model.write_bytes(_mutate((base / source).read_bytes(), rng))
            opts = opts or ["--input", "latent=1x17"]  # a model that loads still stops before the slow export
        else:
            model = Path(source)
        paths = targets(d, rng, base)
        before = snapshot(paths.values())
        code, err = run_main([str(model), str(paths["OUT"]), *opts, "--no-verify", *FAST], capfd)
        judge(f"{kind} model file", code, err, before, [d])
        if code != 2:
            PROBLEMS.append(f"{kind} {source}: exit {code}, expected 2")


def test_fuzz_damaged_nvlabs_pickles(base, tmp_path, capfd):
    """NVlabs network pickles whose embedded source would touch a marker, damaged at random: each run ends in one
    line (a damaged file refused, or one that still loads stopped by a wrong --input) and the source never runs."""
    rng = random.Random(3303)
    marker = tmp_path / "marker"
    snap = nvlabs_pickles.snapshot(c_dim=2, seed=1)
    snap["G_ema"] = nvlabs_pickles.persisted(
        snap["G_ema"], module_src=f"open({str(marker)!r}, 'w').close()\n" + snap["G_ema"]._module_source
    )
    data = nvlabs_pickles.dumps(snap, protocol=rng.choice([3, 4]))
    for i in range(16):
        d = tmp_path / f"n{i}"
        d.mkdir()
        model = d / "network-snapshot.pkl"
        model.write_bytes(_mutate(data, rng))
        paths = targets(d, rng, base)
        before = snapshot(paths.values())
        argv = [str(model), str(paths["OUT"]), "--import-path", str(nvlabs_pickles.FORMAT), "--input", "latent=1x17", "--no-verify", *FAST]
        code, err = run_main(argv, capfd)
        judge("damaged NVlabs pickle", code, err, before, [d], [marker])
        if code != 2:
            PROBLEMS.append(f"damaged NVlabs pickle {i}: exit {code}, expected 2")


# -- 3. odd paths and option values ----------------------------------------------------------------------


def _name(rng: random.Random, suffix: str) -> str:
    pieces = ["g", "ü", " ", "-", "é", "\udcff", "\udcfe", "x" * rng.randrange(1, 120), "☃", "'", '"', "$(id)", ";", "*"]
    stem = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 8)))
    room = 255 - len(os.fsencode(suffix))
    return os.fsdecode(os.fsencode(stem)[:room]) + suffix


OPTION_VALUES = {
    "--rtol": ["-1", "0", "nan", "inf", "-inf", "1e-400", "1e400", "x", "", "1e-3"],
    "--atol": ["-1", "0", "nan", "inf", "abc", "1e-2"],
    "--opset": ["-1", "0", "12", "13", "18", "99", "1e3", "x"],
    "--input": [
        "latent=3000000000x64",
        "latent=1x100000000000",
        "latent=0x16",
        "latent=1x",
        "latent=1x16",
        "z=1x16",
        "latent=-1x16",
        "latent=2x16",
    ],
    "--providers": ["", "tpu", "cpu,cpu", "cuda", "CPU", "cpu"],
    "--precision": ["fp8", "fp16", ""],
    "--exporter": ["onnx", "", "torchscript"],
}


def test_fuzz_paths_and_options(base, tmp_path, capfd):
    rng = random.Random(3303)
    for i in range(36):
        d = tmp_path / f"o{i}"
        d.mkdir()
        odd_dir = d / _name(rng, "") if rng.random() < 0.3 else d
        if odd_dir != d and rng.random() < 0.8:
            odd_dir.mkdir()
        out = odd_dir / _name(rng, ".onnx" if rng.random() < 0.9 else ".pt")
        argv = [str(base / "dec.pt"), str(out), *FAST]
        extra = [d / "g.ts", d / "g.json"]
        if rng.random() < 0.4:
            argv += ["--torchscript", str(odd_dir / _name(rng, ".ts"))]
        if rng.random() < 0.3:
            argv += ["--report", str(odd_dir / _name(rng, ".json"))]
        for option in rng.sample(list(OPTION_VALUES), rng.randrange(0, 3)):
            argv += [option, rng.choice(OPTION_VALUES[option])]
        if rng.random() < 0.7:
            argv.append("--no-verify")
        if rng.random() < 0.1:
            argv[1] = argv[0]  # OUT is the model
        existing = [Path(a) for a in argv[1:2]] + extra
        before = snapshot(existing)
        before[base / "dec.pt"] = (base / "dec.pt").read_bytes()
        code, err = run_main(argv, capfd)
        judge("odd path or option", code, err, before, [d, odd_dir])


# -- 4. signals at random moments ------------------------------------------------------------------------


def test_fuzz_signals_at_random_moments(base, tmp_path):
    rng = random.Random(4404)
    for batch in range(4):  # three runs at a time, each signalled at its own moment
        runs = []
        for i in range(3):
            d = tmp_path / f"s{batch}-{i}"
            d.mkdir()
            paths = targets(d, rng, base)
            sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
            delay = rng.choice([rng.uniform(0.05, 1.5), rng.uniform(1.5, 10.0)])  # start-up imports, or somewhere in the run
            argv = [
                sys.executable,
                "-m",
                "modconv_export",
                base / "dec.pt",
                paths["OUT"],
                "--torchscript",
                paths["--torchscript"],
                "--report",
                paths["--report"],
                *FAST,
            ]
            before = snapshot(paths.values())
            runs.append((d, before, sig, delay, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        start = time.monotonic()
        for _d, _before, sig, delay, proc in sorted(runs, key=lambda r: r[3]):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            proc.send_signal(sig)
        for d, before, sig, delay, proc in runs:
            _, err = proc.communicate(timeout=300)
            judge(f"signal {signal.Signals(sig).name}", proc.returncode, err, before, [d])
            if proc.returncode not in (0, 128 + sig):
                PROBLEMS.append(f"signal {sig} after {delay:.2f}s: exit {proc.returncode}")


# -- 5. full disks and failing writes --------------------------------------------------------------------


def test_fuzz_failing_writes(base, tmp_path, capfd, monkeypatch):
    from modconv_export._util import files as files_module

    rng = random.Random(5505)
    real = files_module.write_bytes
    for i in range(6):
        d = tmp_path / f"w{i}"
        d.mkdir()
        paths = targets(d, rng, base)
        failing, err_no, calls = rng.randrange(1, 4), rng.choice([errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG]), []

        def write(path, data, failing=failing, err_no=err_no, calls=calls):
            calls.append(path)
            data = data if isinstance(data, bytes) else b"".join(data)  # an ONNX file comes a tensor at a time
            if len(calls) == failing:
                with open(path, "wb") as f:
                    f.write(data[: rng.randrange(len(data) + 1)])
                raise OSError(err_no, os.strerror(err_no), str(path))
            real(path, data)

        patch_file_writes(monkeypatch, write)
        before = snapshot(paths.values())
        argv = [
            str(base / "dec.pt"),
            str(paths["OUT"]),
            "--torchscript",
            str(paths["--torchscript"]),
            "--report",
            str(paths["--report"]),
            "--no-verify",
            *FAST,
        ]
        code, err = run_main(argv, capfd)
        judge("failing write", code, err, before, [d])
        if code != 2 or snapshot(paths.values()) != before:
            PROBLEMS.append(f"failing write {i}: exit {code} or a target changed")
    monkeypatch.undo()


# -- 6. two runs, one output ----------------------------------------------------------------------------


def test_fuzz_concurrent_runs(base, tmp_path):
    rng = random.Random(6606)
    for i in range(1):
        d = tmp_path / f"c{i}"
        d.mkdir()
        shared = d / "shared.onnx"
        good = [sys.executable, "-m", "modconv_export", base / "dec.pt", shared, *FAST]
        bad = [sys.executable, "-m", "modconv_export", base / "dec.pt", shared, "--max-rel-l2", "1e-30", *FAST]  # exact, judged impossibly
        first, second = (good, bad) if rng.random() < 0.5 else (bad, good)
        p1 = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0, 2))
        p2 = subprocess.Popen(second, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Both must have ended before the folder is inspected: while one run is still exporting, its own
        # temporary is rightly there, and judging the first to finish would count it as left behind.
        errors = [proc.communicate(timeout=300)[1] for proc in (p1, p2)]
        for proc, argv, err in ((p1, first, errors[0]), (p2, second, errors[1])):
            expected = 0 if argv is good else 1  # each run judges its own file: the verdicts never swap
            judge("concurrent run", proc.returncode, err, {}, [d])
            if proc.returncode != expected:
                PROBLEMS.append(f"concurrent run {i}: exit {proc.returncode}, expected {expected}: {err[-300:]}")
        if not _complete(shared):
            TOTALS["data lost or partial"] += 1


# -- 7. resource bombs ---------------------------------------------------------------------------------

MiB = 2**20
#: storage classes a bomb declares, with their element size
STORAGES = [("FloatStorage", 4), ("HalfStorage", 2), ("DoubleStorage", 8), ("ByteStorage", 1), ("BFloat16Storage", 2)]
#: how long a refusal may take, and the memory it may take beyond twice the file's size (a normal load)
BOMB_SECONDS, BOMB_SLACK = 3.0, 96 * MiB


def _placed(rng: random.Random, value: object, state: dict | None = None) -> object:
    """``value`` where a file holds data: alone, in a state dict, a training checkpoint, a toolkit checkpoint, a list."""
    where = rng.choice(["top", "state_dict", "training", "checkpoint", "list"])
    if where == "state_dict":
        return {**(state or {}), "extra.weight": value}
    if where == "training":
        return {"g_ema": state or {}, "args": value, "iter": 7}
    if where == "checkpoint":
        config = {**CONFIG, rng.choice(["channels", "n_mlp", "extra"]): value}
        return {"format": "modconv-export", "version": 1, "family": "decoder", "config": config, "state_dict": state or {}}
    return [value, 1] if where == "list" else value


BOMBS = ["deflated tensor", "deflated pickle", "declared beyond (zip)", "record too small", "legacy declared beyond"] * 3 + ["nested"] * 9


def _bomb(rng: random.Random, kind: str, d: Path, state: dict) -> tuple[str, Path, str]:
    """One seeded resource bomb of ``kind``: its name, the file, and the refusal it must get."""
    storage, itemsize = rng.choice(STORAGES)
    if kind == "deflated tensor":
        size = rng.choice([256 * MiB, 512 * MiB, 1024 * MiB, 12 * 1024 * MiB])
        obj = _placed(rng, tensor("0", size // itemsize, storage))
        return kind, zip_bomb(d / "m.pt", obj, {"0": size}, crc=size < 2**32), r"compressed tensor entry \S+/data/0 \(.* inflating to"
    if kind == "deflated pickle":
        obj = _placed(rng, tensor("0", 4, storage))
        return (
            kind,
            zip_bomb(d / "m.pt", obj, {"0": bytes(4 * itemsize)}, pickle_zeros=rng.choice([128, 512]) * MiB),
            r"compressed records inflate",
        )
    if kind == "declared beyond (zip)":
        numel = rng.choice([2**28, 2**34, 2**45, 2**55]) // itemsize
        obj = _placed(rng, tensor(str(rng.randrange(9)), numel, storage))
        return (
            kind,
            zip_bomb(d / "m.pt", obj, {"0": bytes(rng.randrange(64))}),
            r"declares [\d.]+ [KMGTP]?i?B of tensor data in a .* archive",
        )
    if kind == "record too small":
        keys = [str(k) for k in range(rng.randrange(2, 6))]
        records = {k: bytes(itemsize * rng.randrange(1, 64)) for k in keys} | {"pad": bytes(8192)}
        short = rng.choice(keys)
        obj = _placed(rng, [tensor(k, len(records[k]) // itemsize + (k == short) * rng.randrange(1, 512), storage) for k in keys])
        return kind, zip_bomb(d / "m.pt", obj, records), rf"tensor storage '{short}' declares .* but its record holds"
    if kind == "legacy declared beyond":
        numel = rng.choice([2**26, 2**31, 2**40, 2**50]) // itemsize
        header = rng.choice([numel, 4])
        obj = _placed(rng, tensor("1", numel, storage, legacy=True))
        return kind, legacy_bomb(d / "m.pt", obj, {"1": (header, bytes(rng.randrange(64)))}), r"declares .* of tensor data in a .* file"
    how = rng.choice(["list", "memo", "dict", "marks", "tuple", "adopted"])
    levels = rng.randrange(10_000, 30_000) if how == "adopted" else rng.choice([1_000, 100_000, 1_000_000])
    obj = {deep(levels, "tuple"): 1} if how == "tuple" and rng.random() < 0.5 else _placed(rng, deep(levels, how), state)
    return f"nested ({how})", save(obj, d / "m.pt", legacy=rng.random() < 0.3), r"."


def _memory(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak since the last reset) of this process, in bytes."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
        return True
    except OSError:
        return False


def test_fuzz_resource_bombs(base, tmp_path, capfd):
    """Each bomb: exit 2, one short line naming what is wrong, nothing written, in seconds, without the memory."""
    rng = random.Random(7707)
    torch.manual_seed(0)
    state = get_family("decoder").build(CONFIG).state_dict()
    for i, kind in enumerate(BOMBS):
        d = tmp_path / f"b{i}"
        d.mkdir()
        kind, model, expected = _bomb(rng, kind, d, state)
        paths = targets(d, rng, base)
        before = snapshot(paths.values())
        measured, rss = _reset_peak(), _memory("VmRSS")
        start = time.perf_counter()
        code, err = run_main([str(model), str(paths["OUT"]), "--no-verify", *FAST], capfd)
        seconds, rise = time.perf_counter() - start, _memory("VmHWM") - rss if measured else 0
        judge(f"resource bomb: {kind}", code, err, before, [d])
        TOTALS["bombs: slowest ms"] = max(TOTALS["bombs: slowest ms"], int(seconds * 1000))
        TOTALS["bombs: most MiB"] = max(TOTALS["bombs: most MiB"], rise // MiB)
        line = err.strip()
        if code != 2 or not re.search(expected, line) or len(line) > 600:
            PROBLEMS.append(f"bomb {i} ({kind}): exit {code}, expected 2 and /{expected}/: {line[-300:]!r}")
        if seconds > BOMB_SECONDS or rise > 2 * model.stat().st_size + BOMB_SLACK:
            PROBLEMS.append(f"bomb {i} ({kind}): {seconds:.1f} s and {rise / MiB:.0f} MiB for a {model.stat().st_size / MiB:.1f} MiB file")
        model.unlink()  # the next bombs need the disk more than this one


# -- the numbers -----------------------------------------------------------------------------------------


def test_fuzz_summary(tmp_path):
    if TOTALS["cases"] == 0:
        pytest.skip("run with the fuzz cases above")
    summary = {k: TOTALS[k] for k in sorted(TOTALS)}
    (tmp_path / "fuzz-summary.json").write_text(json.dumps({"totals": summary, "problems": PROBLEMS}, indent=2))
    print("\nfuzz summary: " + ", ".join(f"{k} {v}" for k, v in summary.items() if not k.startswith("cases: ")))
    print("fuzz classes: " + ", ".join(f"{k[7:]} {v}" for k, v in summary.items() if k.startswith("cases: ")))
    assert PROBLEMS == [], "\n".join(PROBLEMS[:20])
    assert TOTALS["tracebacks"] == 0 and TOTALS["data lost or partial"] == 0 and TOTALS["pickle code executions"] == 0
    assert TOTALS["clean exits"] == TOTALS["cases"]
