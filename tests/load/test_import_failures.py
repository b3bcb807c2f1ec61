"""A class the allowlist would allow, whose module fails to import (rosinality's ``model.py`` builds CUDA code when
imported): the refusal names the module and the import error, not "outside the allowlist"."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

from modconv_export.errors import LoadError
from modconv_export.load import load_model

MODULE = """\
import torch.nn as nn
{fail}

class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)
"""


def test_a_module_that_fails_to_import_is_named_with_its_error(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "cuda_model.py").write_text(MODULE.format(fail=""))
    sys.path.insert(0, str(code))
    try:
        import cuda_model

        torch.save(cuda_model.Generator(), tmp_path / "g.pt")
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("cuda_model", None)
    (code / "cuda_model.py").write_text(MODULE.format(fail="raise OSError('CUDA_HOME environment variable is not set.')"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoadError) as info:
        load_model(tmp_path / "g.pt", trust_pickle=True, import_paths=[code])
    assert str(info.value) == (
        f"{tmp_path / 'g.pt'}: cannot be unpickled: its classes cuda_model.Generator are defined in cuda_model, "
        "which fails to import here: OSError: CUDA_HOME environment variable is not set."
    )
    assert "cuda_model" not in sys.modules
    assert isinstance(nn.Linear(1, 1), nn.Module)
