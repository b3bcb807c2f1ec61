"""``--trust-pickle`` is an allowlist: hostile pickles are refused before anything runs, real models still load.

Every payload below only creates a marker file. Each test first runs it through the toolkit (API and
command line, with ``--trust-pickle`` and an ``--import-path``): exit 2, one line naming what was
refused, no marker. Then a control loads the same file with plain ``torch.load(weights_only=False)``
and must see the marker, which proves the payload live. Both torch.save formats (zip and legacy) are run.
"""

from __future__ import annotations

import io
import pickle
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from modconv_export import LoadError, load_model
from modconv_export.cli import main

from helpers import TESTS
from pickle_payloads import Attr, Build, Call, G, NewObj, Persistent, StackGlobal, Touch, plain_pickle, save, to_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")  # the STACK_GLOBAL payloads' own protocol

USER_CODE = TESTS / "fixtures" / "user_code"
ERROR = "modconv-export: error: "


@torch.jit.script
class _TouchOnLoad:  # a TorchScript class whose __setstate__ runs inside torch.jit.load
    def __init__(self, path: str):
        self.path = path

    def __getstate__(self) -> tuple[str, int]:
        return (self.path, 0)

    def __setstate__(self, state: tuple[str, int]) -> None:
        self.path = state[0]
        if torch.from_file(self.path, True, 1).numel() != 1:  # used, so the TorchScript compiler keeps the call
            self.path = ""


class _HoldsTouch(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.touch = _TouchOnLoad(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Ctx:
    """Files a payload refers to, all under one temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.marker = tmp, tmp / "marker"
        self.sh = f"touch {self.marker}"
        self.py = f"open({str(self.marker)!r}, 'w').close()"

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def inner(self) -> str:
        """A nested torch.save file whose own pickle runs the payload."""
        return str(save({"w": torch.zeros(1), "x": Call(G("os", "system"), self.sh)}, self.tmp / "inner.pt"))


def _partial(fn, args: tuple, kwargs: dict) -> Build:
    """``functools.partial(fn, *args, **kwargs)`` as pickle rebuilds it (the keywords come with BUILD)."""
    return Build(Call(G("functools", "partial"), fn), (fn, args, kwargs, None))


def _torch_c_function_with_os() -> str:
    return next(n for n, v in vars(torch._C).items() if callable(v) and "os" in getattr(v, "__globals__", {}))


def _state_dict_with(payload) -> dict:
    torch.manual_seed(0)
    return {**nn.Conv2d(3, 4, 3).state_dict(), "extra": payload}


#: kind -> (build(ctx) -> object to save, pickle protocol, what the refusal must name)
PAYLOADS: dict[str, tuple[Callable[[Ctx], object], int, str]] = {
    "os.system": (lambda c: Call(G("os", "system"), c.sh), 2, r"os\.system"),
    "posix.system via __reduce__": (lambda c: {"w": torch.ones(2), "hook": Touch(c.marker)}, 2, r"posix\.system"),
    "getattr(torch.os, 'system')": (lambda c: Call(Attr(G("torch", "os"), "system"), c.sh), 2, r"torch\.os"),
    "STACK_GLOBAL torch.serialization + os.system": (lambda c: Call(StackGlobal("torch.serialization", "os.system"), c.sh), 4, r"torch\.serialization\.os\.system"),
    "STACK_GLOBAL torch._utils_internal + os.system": (lambda c: Call(StackGlobal("torch._utils_internal", "os.system"), c.sh), 4, r"torch\._utils_internal\.os\.system"),
    "torch._C.<fn>.__globals__['os']": (lambda c: Call(Attr(Call(Attr(Attr(G("torch._C", _torch_c_function_with_os()), "__globals__"), "get"), "os"), "system"), c.sh), 2, r"torch\._C\._gds"),
    "functools.partial(torch.load, weights_only=False) on an inner file": (lambda c: Call(_partial(G("torch", "load"), (c.inner(),), {"weights_only": False})), 2, r"functools\.partial.*torch\.load|torch\.load.*functools\.partial"),
    "torch.load of nested torch.save bytes": (lambda c: Call(_partial(G("torch", "load"), (Call(G("io", "BytesIO"), to_bytes({"x": Call(G("os", "system"), c.sh)})),), {"weights_only": False})), 2, r"io\.BytesIO"),
    "pydoc.pipepager": (lambda c: Call(G("pydoc", "pipepager"), "text", c.sh), 2, r"pydoc\.pipepager"),
    "pydoc.pipepager inside a real state_dict": (lambda c: _state_dict_with(Call(G("pydoc", "pipepager"), "text", c.sh)), 2, r"pydoc\.pipepager"),
    "timeit.timeit(string)": (lambda c: Call(G("timeit", "timeit"), "pass", c.py), 2, r"timeit\.timeit"),
    "module name computed by codecs.decode": (lambda c: Call(StackGlobal(Call(G("codecs", "decode"), "bf", "rot13"), "system"), c.sh), 4, r"codecs\.decode"),
    "builtins.eval": (lambda c: Call(G("builtins", "eval"), c.py), 2, r"builtins\.eval"),
    "builtins.exec": (lambda c: Call(G("builtins", "exec"), c.py), 2, r"builtins\.exec"),
    "builtins.__import__": (lambda c: Call(Attr(Call(G("builtins", "__import__"), "os"), "system"), c.sh), 2, r"builtins\.__import__"),
    "builtins.open": (lambda c: Call(G("builtins", "open"), str(c.marker), "w"), 2, r"builtins\.open"),
    "subprocess.call": (lambda c: Call(G("subprocess", "call"), ["touch", str(c.marker)]), 2, r"subprocess\.call"),
    "os.popen": (lambda c: Call(Attr(Call(G("os", "popen"), c.sh), "read")), 2, r"os\.popen"),
    "shutil.copyfile": (lambda c: Call(G("shutil", "copyfile"), c.file("src.txt", "x"), str(c.marker)), 2, r"shutil\.copyfile"),
    "importlib SourceFileLoader": (lambda c: Call(Attr(Call(G("importlib.machinery", "SourceFileLoader"), "payload_mod", c.file("payload_mod.py", c.py)), "load_module")), 2, r"importlib\.machinery\.SourceFileLoader"),
    "pickle.loads nested": (lambda c: Call(G("pickle", "loads"), plain_pickle(Call(G("os", "system"), c.sh))), 2, r"pickle\.loads"),
    "numpy.load(allow_pickle=True)": (lambda c: Call(G("numpy", "load"), _npy_with_object(c), None, True), 2, r"numpy\.load"),
    "numpy.savetxt": (lambda c: Call(G("numpy", "savetxt"), str(c.marker), [1.0]), 2, r"numpy\.savetxt"),
    "torch.hub.load (local)": (lambda c: Call(_partial(G("torch.hub", "load"), (_hub_repo(c), "entry"), {"source": "local", "trust_repo": True})), 2, r"torch\.hub\.load"),
    "torch.hub._load_local": (lambda c: Call(G("torch.hub", "_load_local"), _hub_repo(c), "entry"), 2, r"torch\.hub\._load_local"),
    "torch.jit.load of a crafted file": (lambda c: Call(G("torch.jit", "load"), _crafted_torchscript(c)), 2, r"torch\.jit\.load"),
    "torch.from_file": (lambda c: Call(G("torch", "from_file"), str(c.marker), True, 1), 2, r"torch\.from_file"),
    "torch.save": (lambda c: Call(G("torch", "save"), 1, str(c.marker)), 2, r"torch\.save"),
    "torch.package.PackageExporter (a torch class with side effects)": (lambda c: Call(G("torch.package", "PackageExporter"), str(c.marker)), 2, r"torch\.package\.PackageExporter"),
    "getattr(_VariableFunctionsClass, 'from_file') (allowed names only)": (lambda c: Call(Attr(G("torch._C", "_VariableFunctionsClass"), "from_file"), str(c.marker), True, 1), 2, r"getattr\(.*'from_file'\)"),
    "webbrowser.open": (lambda c: Call(G("webbrowser", "open"), str(c.marker)), 2, r"webbrowser\.open"),
    "ctypes.CDLL(None).system": (lambda c: Call(Attr(Call(G("ctypes", "CDLL"), None), "system"), c.sh.encode()), 2, r"ctypes\.CDLL"),
    "runpy.run_path": (lambda c: Call(G("runpy", "run_path"), c.file("script.py", c.py)), 2, r"runpy\.run_path"),
    "code.InteractiveInterpreter": (lambda c: Call(Attr(Call(G("code", "InteractiveInterpreter")), "runsource"), c.py), 2, r"code\.InteractiveInterpreter"),
    "operator.attrgetter chain": (lambda c: Call(Call(Call(G("operator", "attrgetter"), "os.system"), G("torch", "serialization")), c.sh), 2, r"operator\.attrgetter"),
    "operator.methodcaller": (lambda c: Call(Call(G("operator", "methodcaller"), "system", c.sh), G("torch", "os")), 2, r"operator\.methodcaller"),
    "copyreg._reconstructor": (lambda c: Call(G("copyreg", "_reconstructor"), G("logging", "FileHandler"), G("logging", "FileHandler"), str(c.marker)), 2, r"copyreg\._reconstructor"),
    "logging.FileHandler": (lambda c: Call(G("logging", "FileHandler"), str(c.marker)), 2, r"logging\.FileHandler"),
    "REDUCE on a class from --import-path": (lambda c: {"model": Call(G("user_code_layers", "Recorder"), str(c.marker))}, 2, r"the file calls user_code_layers\.Recorder\(\.\.\.\)"),
    "REDUCE on an allowed torch class with hostile args": (lambda c: Call(G("torch.nn.modules.container", "ModuleList"), Call(G("builtins", "map"), G("os", "system"), [c.sh])), 2, r"builtins\.map"),
    "BUILD sets __setstate__ on an allowed helper": (lambda c: Build(Build(NewObj(G("user_code_layers", "Helper")), {"__setstate__": G("os", "system")}), c.sh), 2, r"os\.system"),
    "BUILD sets __setstate__ on types.SimpleNamespace": (lambda c: Build(Build(NewObj(G("types", "SimpleNamespace")), {"__setstate__": G("os", "system")}), c.sh), 2, r"types\.SimpleNamespace"),
    "persistent_load id built by a payload": (lambda c: {"w": Persistent(("storage", Call(G("os", "system"), c.sh), "0", "cpu", 1))}, 2, r"os\.system"),
}  # fmt: skip


def _npy_with_object(c: Ctx) -> str:
    path = c.tmp / "objects.npy"
    np.save(path, np.array([Touch(c.marker)], dtype=object), allow_pickle=True)
    return str(path)


def _hub_repo(c: Ctx) -> str:
    c.file("hubrepo/hubconf.py", f"{c.py}\n\ndef entry():\n    return None\n")
    return str(c.tmp / "hubrepo")


def _crafted_torchscript(c: Ctx) -> str:
    path = c.tmp / "crafted.ts"
    torch.jit.save(torch.jit.script(_HoldsTouch(str(c.marker))), str(path))
    return str(path)


def _wait_for(path: Path, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return path.exists()


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR) and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_payload_is_refused_and_proven_live(kind, fmt, tmp_path, capfd, monkeypatch):
    build, protocol, names = PAYLOADS[kind]
    monkeypatch.setenv("BROWSER", "touch %s")  # webbrowser.open runs this command
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path)
    model = save(build(ctx), tmp_path / "payload.pt", legacy=fmt == "legacy", protocol=protocol)
    assert not ctx.marker.exists()

    with pytest.raises(LoadError) as info:  # the API, trusting the file and pointing at the user's code
        load_model(model, trust_pickle=True, import_paths=[USER_CODE])
    assert re.search(names, str(info.value)) and "\n" not in str(info.value)
    with pytest.raises(LoadError, match="--trust-pickle"):
        load_model(model)
    out = tmp_path / "out"
    out.mkdir()
    capfd.readouterr()
    code = main(
        [
            str(model),
            str(out / "g.onnx"),
            "--trust-pickle",
            "--import-path",
            str(USER_CODE),
            "--no-verify",
            "--torchscript",
            str(out / "g.ts"),
        ]
    )
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and re.search(names, line) and "refused even with --trust-pickle" in line, line
    assert list(out.iterdir()) == []
    time.sleep(0.05)  # an asynchronous payload would have had time to run
    assert not ctx.marker.exists(), "the payload ran inside the toolkit"

    monkeypatch.syspath_prepend(str(USER_CODE))  # the control: what plain torch.load does with the same file
    try:
        torch.load(model, weights_only=False)
    except Exception:
        pass  # many payloads fail after their side effect; the marker is what counts
    assert _wait_for(ctx.marker), f"the control did not run the payload: {kind} is not live"


def test_payload_table_is_large_enough():
    assert len(PAYLOADS) >= 30


# -- what still loads ---------------------------------------------------------------------------------


def _pickled_good(tmp_path: Path, monkeypatch) -> tuple[Path, nn.Module]:
    monkeypatch.syspath_prepend(str(USER_CODE))
    import user_code_layers

    torch.manual_seed(1)
    model = user_code_layers.Good().eval()
    torch.save(model, tmp_path / "good.pt")
    torch.save(model, tmp_path / "good_legacy.pt", _use_new_zipfile_serialization=False)
    return tmp_path, model


def test_user_model_loads_with_its_helpers_functions_and_class_attributes(tmp_path, monkeypatch):
    tmp, model = _pickled_good(tmp_path, monkeypatch)
    x = torch.randn(3, 4)
    loaded = load_model(tmp / "good.pt", trust_pickle=True, import_paths=[USER_CODE]).module
    assert type(loaded) is type(model) and loaded.kind is nn.Linear and loaded.act is torch.tanh  # classes restored
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the legacy format stores module classes as persistent ids, which torch's safe unpickler refuses to read
    with pytest.raises(LoadError, match=r"pickled module in torch's legacy format .* re-save it with torch\.save's default format"):
        load_model(tmp / "good_legacy.pt", trust_pickle=True, import_paths=[USER_CODE])
    monkeypatch.chdir(USER_CODE)  # the current directory counts as pointed at
    assert type(load_model(tmp / "good.pt", trust_pickle=True).module).__name__ == "Good"


def test_user_classes_need_a_directory_the_user_named(tmp_path, monkeypatch):
    tmp, _ = _pickled_good(tmp_path, monkeypatch)  # importable through sys.path, but from no directory named
    with pytest.raises(LoadError, match=r"outside the allowlist: user_code_layers\.Good\b"):
        load_model(tmp / "good.pt", trust_pickle=True)


def test_a_file_under_the_import_path_is_imported_only_if_it_defines_the_class(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text(f"open({str(marker)!r}, 'w').close()\n\nclass Trainer:\n    pass\n")
    save({"m": NewObj(G("train", "Model"))}, tmp_path / "p.pt")
    with pytest.raises(LoadError, match=r"train\.Model"):
        load_model(tmp_path / "p.pt", trust_pickle=True, import_paths=[tmp_path / "code"])
    assert not marker.exists() and "train" not in sys.modules  # the script never ran


def test_a_user_class_deriving_from_a_stdlib_class_is_no_plain_helper(tmp_path):
    save({"m": NewObj(G("user_code_layers", "Logged"))}, tmp_path / "p.pt")
    with pytest.raises(LoadError, match=r"user_code_layers\.Logged \(derives from pathlib\.\w*Path\)"):
        load_model(tmp_path / "p.pt", trust_pickle=True, import_paths=[USER_CODE])


@pytest.mark.parametrize(
    "payload, message",
    [
        (Call(G("torch.nn.modules.linear", "Linear"), 200_000, 200_000), r"the file calls torch\.nn\.modules\.linear\.Linear\(\.\.\.\)"),
        (NewObj(G("torch.nn.modules.linear", "Linear"), (5,)), r"creates torch\.nn\.modules\.linear\.Linear with arguments of its own"),
        (Call(G("torch._tensor", "_rebuild_from_type_v2"), G("torch.nn.modules.linear", "Linear"), G("torch", "Tensor"), (10, 10), {}), r"the file calls torch\.nn\.modules\.linear\.Linear"),
    ],
    ids=["REDUCE", "NEWOBJ with arguments", "_rebuild_from_type_v2"],
)  # fmt: skip
def test_allowed_classes_are_never_called_with_the_files_arguments(payload, message, tmp_path):
    """All names allowed: the guard refuses the call itself (a 160 GB Linear is never allocated)."""
    save({"m": payload}, tmp_path / "p.pt")
    start = time.perf_counter()
    with pytest.raises(LoadError, match=message):
        load_model(tmp_path / "p.pt", trust_pickle=True)
    assert time.perf_counter() - start < 5


def test_allow_global_is_the_escape_hatch(tmp_path, capfd):
    import functools

    import torch.nn.functional as F

    holder = nn.Sequential(nn.Linear(2, 2))
    holder.act = functools.partial(F.leaky_relu, negative_slope=0.3)
    torch.save(holder, tmp_path / "p.pt")
    assert main([str(tmp_path / "p.pt"), str(tmp_path / "g.onnx"), "--trust-pickle", "--input", "x=1x2", "--no-verify"]) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "functools.partial" in line and "--allow-global MODULE.NAME" in line
    loaded = load_model(tmp_path / "p.pt", trust_pickle=True, allow_globals=["functools.partial"]).module
    assert isinstance(loaded.act, functools.partial) and loaded.act.func is F.leaky_relu
    with pytest.raises(LoadError, match="--allow-global no_such_module.thing: no such module attribute"):
        load_model(tmp_path / "p.pt", trust_pickle=True, allow_globals=["no_such_module.thing"])


def test_a_huge_allocation_from_torchs_own_allowlist_is_a_clean_error(tmp_path, capfd):
    save({"b": Call(G("builtins", "bytearray"), 2**62)}, tmp_path / "p.pt")
    assert main([str(tmp_path / "p.pt"), str(tmp_path / "g.onnx"), "--trust-pickle", "--no-verify"]) == 2
    assert re.search(r"out of memory|MemoryError", one_error_line(capfd.readouterr().err))


def test_zip_with_a_second_pickle_folder(tmp_path):
    """An archive holding a hostile ``evil/data.pkl`` beside a benign one: torch's reader (which the listing
    and the load share) refuses mixed folders, so neither pickle is read."""
    marker = tmp_path / "marker"
    benign = tmp_path / "benign.pt"
    torch.save({"w": torch.zeros(2)}, benign)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(benign) as src, zipfile.ZipFile(evil, "w") as dst:
        dst.writestr("evil/data.pkl", plain_pickle(Call(G("os", "system"), f"touch {marker}")))
        dst.writestr("evil/version", b"3\n")
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    with pytest.raises(LoadError, match=r"not in a subdirectory evil/"):
        load_model(evil, trust_pickle=True)
    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(evil, weights_only=False)
    assert not marker.exists()


def test_a_real_user_generator_still_exports_with_import_path(tmp_path):
    """tests/fixtures/user_layers (a package): pickled, loaded from --import-path, exported and verified in a subprocess."""
    sys.path.insert(0, str(TESTS / "fixtures"))
    try:
        from user_layers.my_stylegan import UserGenerator
    finally:
        sys.path.remove(str(TESTS / "fixtures"))
    torch.manual_seed(0)
    torch.save(UserGenerator().eval(), tmp_path / "user.pt")
    proc = subprocess.run([sys.executable, "-m", "modconv_export", tmp_path / "user.pt", tmp_path / "user.onnx", "--trust-pickle", "--import-path", TESTS / "fixtures",
                           "--input", "x=1x4x8x8", "--input", "z=1x8", "--exporter", "legacy", "--providers", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pickled module (UserGenerator" in proc.stdout and re.search(r"parity +PASSED", proc.stdout)


@pytest.mark.parametrize(
    "kind",
    ["pydoc.pipepager inside a real state_dict", "STACK_GLOBAL torch.serialization + os.system", "REDUCE on a class from --import-path"],
)
def test_payloads_through_the_console_script(kind, tmp_path):
    build, protocol, names = PAYLOADS[kind]
    ctx = Ctx(tmp_path)
    model = save(build(ctx), tmp_path / "payload.pt", protocol=protocol)
    script = Path(sys.executable).parent / "modconv-export"
    proc = subprocess.run(
        [script, model, tmp_path / "g.onnx", "--trust-pickle", "--import-path", USER_CODE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and re.search(names, one_error_line(proc.stderr))
    assert not ctx.marker.exists() and not (tmp_path / "g.onnx").exists()


def test_pickle_module_is_not_used_for_loading(tmp_path):
    """Nothing in the toolkit unpickles with the full unpickler: torch files go through weights_only=True, plain
    pickles (NVlabs') through the one restricted unpickler, whose globals come from its table only."""
    from modconv_export.load.plain_pickle import RestrictedUnpickler

    root = TESTS.parent / "modconv_export"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert not re.search(r"pickle\.loads?\(|(?<!Restricted)Unpickler\(", text), path
        assert len(re.findall(r"\(pickle\.Unpickler\)", text)) == (path.name == "plain_pickle.py"), path
    assert {"find_class", "persistent_load"} <= set(vars(RestrictedUnpickler))
    ctx = Ctx(tmp_path)
    for payload in (Call(G("os", "system"), ctx.sh), Persistent(("storage", 0))):
        with pytest.raises(pickle.UnpicklingError):
            RestrictedUnpickler(io.BytesIO(plain_pickle(payload)), {"builtins.print": print}).load()
    assert not ctx.marker.exists() and pickle.HIGHEST_PROTOCOL >= 4


# -- NumPy data, as NVlabs' and StyleGAN3's pickles hold it ------------------------------------------------


class _HoldsNumpy(nn.Module):
    """A module with a NumPy scalar gain and a NumPy array attribute (NVlabs keeps ``weight_gain = lr / np.sqrt(n)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.gain = 1 / np.sqrt(np.float64(4))
        self.taps = np.array([1.0, 3.0, 3.0, 1.0], dtype=np.float32)


def test_numpy_numbers_and_arrays_load_as_data(tmp_path):
    model = _HoldsNumpy()
    torch.save(model, tmp_path / "np.pt")
    loaded = load_model(tmp_path / "np.pt", trust_pickle=True, import_paths=[Path(__file__).parent]).module  # this file defines the class
    assert loaded.gain == model.gain and type(loaded.gain) is np.float64
    assert loaded.taps.dtype == np.float32 and np.array_equal(loaded.taps, model.taps)


@pytest.mark.parametrize(
    "payload, message",
    [
        (
            lambda: Call(G("numpy._core.multiarray", "scalar"), Call(G("numpy", "dtype"), "O", False, True), {"w": 1}),
            r"NumPy scalar of dtype\('O'\)",
        ),
        (
            lambda: Call(G("numpy._core.multiarray", "_reconstruct"), G("torch.nn.modules.linear", "Linear"), (0,), "b"),
            r"reconstructs .*Linear.* as a NumPy array",
        ),
    ],
    ids=["object-scalar", "reconstruct-other-class"],
)
def test_numpy_data_constructors_build_nothing_else(payload, message, tmp_path):
    path = save({"x": payload()}, tmp_path / "np_payload.pt")
    with pytest.raises(LoadError, match=message):
        load_model(path, trust_pickle=True)
