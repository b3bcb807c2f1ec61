"""Hand-off: the verified file in the formats of the tools that come next (Polygraphy JSON, a Triton repository)."""

from .files import (
    GraphTensor,
    cuda_found,
    graph_io,
    polygraphy_array,
    save_parity_data,
    save_polygraphy_inputs,
    save_polygraphy_outputs,
    triton_config,
    write_triton_repository,
)

__all__ = [
    "GraphTensor", "cuda_found", "graph_io", "polygraphy_array", "save_parity_data", "save_polygraphy_inputs",
    "save_polygraphy_outputs", "triton_config", "write_triton_repository",
]  # fmt: skip
