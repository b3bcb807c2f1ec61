"""Hand-off: the verified file in the formats of the tools that come next (Polygraphy JSON, a Triton repository)."""

from .files import (
    TRITON_KINDS,
    GraphTensor,
    graph_io,
    polygraphy_array,
    save_parity_data,
    save_polygraphy_inputs,
    save_polygraphy_outputs,
    triton_config,
    write_triton_repository,
)

__all__ = [
    "TRITON_KINDS", "GraphTensor", "graph_io", "polygraphy_array", "save_parity_data", "save_polygraphy_inputs",
    "save_polygraphy_outputs", "triton_config", "write_triton_repository",
]  # fmt: skip
