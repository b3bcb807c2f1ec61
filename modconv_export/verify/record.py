"""Parity recording: the verdict of a check written into the ONNX file it judged.

The export writes every file with ``{"verified": false}``
(:func:`~modconv_export.export.metadata.unverified_properties`); after the check, :func:`record_parity`
replaces it with the verdict, the worst relative L2 per backend and the SHA-256 of the graph that was
judged -- refusing if the file's graph is no longer that one. The verdict is verification's data, so it
is written here (verify reads export's property helpers; export never imports verify).
"""

from __future__ import annotations

import os
from typing import Any

import onnx

from .._util.files import atomic_output, write_bytes
from ..errors import ExportError
from ..export.metadata import PARITY_KEY, dumps_property, graph_sha256, unverified_properties
from .report import ParityReport

__all__ = ["parity_properties", "record_parity"]


def parity_properties(report: ParityReport | None, graph_digest: str | None = None) -> dict[str, str]:
    """``parity``: the verdict, the worst relative L2 per backend that ran, and the verified graph's hash."""
    if report is None:
        return unverified_properties()
    worst: dict[str, float] = {}
    for row in report.rows:
        if row.rel_l2 is not None and row.rel_l2 == row.rel_l2 and not row.is_eager:  # skip NaN
            worst[row.backend] = max(worst.get(row.backend, 0.0), float(f"{row.rel_l2:.2e}"))
    data: dict[str, Any] = {
        "verified": True,
        "passed": report.passed,
        "summary": report.summary,
        "precision": report.precision,
        "batch_sizes": list(report.batch_sizes),
        "worst_rel_l2": worst,
    }
    if graph_digest:
        data["graph_sha256"] = graph_digest
    return {PARITY_KEY: dumps_property(data)}


def record_parity(path: str | os.PathLike, report: ParityReport | None, *, graph_digest: str) -> None:
    """Finalise a verified file: add the ``parity`` property, leaving the graph byte for byte as it was.

    ``graph_digest`` is :func:`~modconv_export.export.metadata.graph_sha256` of the file that was verified; if the graph at ``path`` is
    no longer that one, nothing is written (:class:`ExportError`): a verdict describes one graph only.
    """
    proto = onnx.load(str(path))
    if graph_sha256(proto) != graph_digest:
        raise ExportError(f"{path} changed after it was verified; its parity result is not recorded")
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(parity_properties(report, graph_digest))
    onnx.helper.set_model_props(proto, props)
    data = proto.SerializeToString()
    with atomic_output(path) as tmp:
        write_bytes(tmp, data)
