"""The parity verdict: one :class:`ParityRow` per backend x batch x output, gathered in a :class:`ParityReport`.

The report is plain data. ``passed`` is the only judgement it makes: every row that ran passed *and*
at least one non-eager backend (TorchScript, ONNX Runtime or OpenVINO) ran -- checking the eager rewrite alone
proves nothing about an exported file. ``format_table()`` is the terminal view, ``write_json()`` the
machine-readable one (rows, tolerances, library versions, the providers that actually ran).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._util.files import atomic_output

__all__ = ["FAIL", "ImageSample", "NOT_RUN", "PASS", "ParityData", "ParityReport", "ParityRow"]

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
STATUSES = (PASS, FAIL, NOT_RUN)
_FLOATS = ("max_abs", "max_rel", "rel_l2", "cosine", "psnr", "time_ms", "rel_l2_limit", "rtol_limit", "atol_limit", "psnr_limit")


@dataclass
class ParityRow:
    """One backend at one batch size on one output (``batch=None``/``output="*"``: it never got that far).

    ``reason`` is the verdict of a row that ran (``"rel-L2 3.0e-06 ≤ 1e-04"``), or why it failed or did
    not run. ``reference`` names what it was compared against; ``time_ms`` is the median inference time
    of the whole batch (all outputs). ``rtol_limit``/``atol_limit`` are the element-wise band (``None``:
    not checked) and ``outside_band`` the number of elements outside it.
    """

    backend: str
    status: str
    batch: int | None = None
    output: str = "*"
    reason: str = ""
    precision: str = "fp32"
    reference: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    psnr: float | None = None
    nan_count: int | None = None
    inf_count: int | None = None
    time_ms: float | None = None
    rel_l2_limit: float | None = None
    rtol_limit: float | None = None
    atol_limit: float | None = None
    outside_band: int | None = None
    psnr_limit: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"row status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ran(self) -> bool:
        return self.status != NOT_RUN

    @property
    def is_eager(self) -> bool:
        return self.backend.startswith("eager")

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) if k in _FLOATS else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityRow:
        known = {f.name for f in fields(cls)}
        return cls(**{k: _from_json_float(v) if k in _FLOATS else v for k, v in data.items() if k in known})


@dataclass
class ImageSample:
    """Reference and backend images (``[n, C, H, W]``, a few samples) kept for the report picture only."""

    output: str
    backend: str
    reference: str
    batch: int
    expected: np.ndarray
    actual: np.ndarray
    row: ParityRow


@dataclass
class ParityData:
    """The numbers every backend was fed and judged against, for hand-off files (Polygraphy JSON).

    ``inputs[batch]`` are the inputs in ``forward`` order; ``expected[batch]`` the reference outputs in
    output order, named ``output_names``; ``reference`` names the runner that computed them and
    ``times_ms[batch]`` how long it took.
    """

    inputs: dict[int, tuple[np.ndarray, ...]]
    expected: dict[int, list[np.ndarray]]
    output_names: list[str]
    reference: str
    times_ms: dict[int, float] = field(default_factory=dict)


@dataclass
class ParityReport:
    """All rows plus what is needed to reproduce and audit them. Not written to JSON: ``images``, ``data``."""

    rows: list[ParityRow]
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 3)
    seed: int = 0
    tolerances: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: dict[str, list[str]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str | None] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    images: list[ImageSample] = field(default_factory=list, repr=False, compare=False)
    data: ParityData | None = field(default=None, repr=False, compare=False)

    @property
    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if r.status == FAIL]

    @property
    def non_eager_ran(self) -> bool:
        return any(r.ran and not r.is_eager for r in self.rows)

    @property
    def passed(self) -> bool:
        return self.non_eager_ran and all(r.status == PASS for r in self.rows if r.ran)

    @property
    def summary(self) -> str:
        ran = [r for r in self.rows if r.ran]
        skipped = len(self.rows) - len(ran)
        if self.failures:
            return f"FAILED: {len(self.failures)} of {len(ran)} rows failed ({skipped} not run)"
        if not self.non_eager_ran:
            return "FAILED: no exported backend ran (TorchScript, ONNX Runtime or OpenVINO); the eager rewrite alone proves nothing"
        return f"PASSED: {len(ran)} rows passed ({skipped} not run)"

    def format_table(self) -> str:
        """One line per row, e.g. ``PASSED  | ort-cpu | b=3 | output | rel-L2 3.0e-06 ≤ 1e-04 | ...``."""
        lines = [f"parity {self.precision} | seed {self.seed} | batch sizes {', '.join(map(str, self.batch_sizes))}"]
        lines += [f"reference {name}: {text}" for name, text in self.references.items()]
        cells = [_cells(r) for r in self.rows]
        widths = [max((len(c[i]) for c in cells), default=0) for i in range(4)]
        widths.append(max((len(c[4]) for c in cells if c[5]), default=0))  # not-run reasons may run long
        for c in cells:
            line = " | ".join(c[i].ljust(widths[i]) for i in range(4)) + " | " + (c[4].ljust(widths[4]) if c[5] else c[4])
            lines.append((line + (" | " + c[5] if c[5] else "")).rstrip())
        lines.append(self.summary)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; non-finite floats are written as the strings "inf", "-inf", "nan"."""
        return {
            "passed": self.passed,
            "summary": self.summary,
            "precision": self.precision,
            "batch_sizes": list(self.batch_sizes),
            "seed": self.seed,
            "references": dict(self.references),
            "tolerances": {k: {n: _json_float(v) if isinstance(v, float) else v for n, v in t.items()} for k, t in self.tolerances.items()},
            "providers": {k: list(v) for k, v in self.providers.items()},
            "versions": dict(self.versions),
            "files": dict(self.files),
            "rows": [r.to_dict() for r in self.rows],
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically and return the path."""
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False, allow_nan=False)
        with atomic_output(path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParityReport:
        tolerances = {
            k: {n: _from_json_float(v) if n in ("rel_l2", "rtol", "atol") else v for n, v in t.items()}
            for k, t in data.get("tolerances", {}).items()
        }
        return cls(
            rows=[ParityRow.from_dict(r) for r in data["rows"]],
            precision=data.get("precision", "fp32"),
            batch_sizes=tuple(data.get("batch_sizes", ())),
            seed=data.get("seed", 0),
            tolerances=tolerances,
            providers={k: list(v) for k, v in data.get("providers", {}).items()},
            versions=dict(data.get("versions", {})),
            files=dict(data.get("files", {})),
            references=dict(data.get("references", {})),
        )

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> ParityReport:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _from_json_float(value: Any) -> Any:
    return float(value) if isinstance(value, str) else value


def _cells(row: ParityRow) -> list[str]:
    status = {PASS: "PASSED", FAIL: "FAILED", NOT_RUN: "NOT RUN"}[row.status]
    batch = f"b={row.batch}" if row.batch is not None else "b=*"
    extras = []
    if row.max_abs is not None and math.isfinite(row.max_abs):
        extras.append(f"max-abs {row.max_abs:.1e}")
    if row.cosine is not None and math.isfinite(row.cosine):
        extras.append(f"cos {row.cosine:.6f}")
    if row.psnr is not None and not math.isnan(row.psnr):
        extras.append(f"PSNR {row.psnr:.1f} dB")
    if row.time_ms is not None:
        extras.append(f"{row.time_ms:.1f} ms")
    return [status, row.backend, batch, row.output, row.reason, "  ".join(extras)]
