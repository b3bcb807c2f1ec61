"""Every exception the toolkit raises on purpose, in one place, so callers (the CLI above all) can turn usage errors into one clear line.

Messages are plain text: the exporters colour parts of theirs for a terminal (torch.onnx's dynamo
exporter embeds ``\\x1b[96m...\\x1b[0m``), which is noise in a log file, a pytest report or a JSON
field, so every error of this toolkit drops terminal escape sequences when it is built.
"""

from __future__ import annotations

import re
import signal

__all__ = [
    "AmbiguousFamilyError",
    "CaptureError",
    "CheckpointError",
    "ExportError",
    "Interrupted",
    "LoadError",
    "LoweringError",
    "MissingExtraError",
    "ModconvExportError",
    "OutOfMemory",
    "RewriteError",
    "RunnerUnavailable",
    "UnknownFamilyError",
    "UsageError",
    "plain_text",
]

#: ECMA-48 control sequences (colours, cursor movement): ESC [ parameters intermediates final-byte.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def plain_text(text: str) -> str:
    """``text`` without terminal escape sequences (``"\\x1b[96mstep 1\\x1b[0m"`` -> ``"step 1"``)."""
    return _ESCAPES.sub("", text)


class ModconvExportError(Exception):
    """Base class of every error this toolkit raises on purpose; its message never holds terminal codes."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(plain_text(a) if isinstance(a, str) else a for a in args))


class RewriteError(ModconvExportError):
    """A module looked like a layer the toolkit rewrites but could not be rewritten exactly."""


class ExportError(ModconvExportError):
    """The exporter failed or produced a file that does not meet the toolkit's guarantees."""


class LoweringError(ModconvExportError):
    """An ``autograd.Function`` lowering was registered wrongly or cannot be applied."""


class LoadError(ModconvExportError):
    """A model file cannot be loaded: missing, unreadable, unsafe without trust, or not a model we know."""


class UsageError(ModconvExportError):
    """A malformed command line (bad option, malformed ``--input``, conflicting paths)."""


class CheckpointError(ModconvExportError):
    """A file is not a valid toolkit checkpoint."""


class MissingExtraError(ModconvExportError, ImportError):
    """An optional dependency (an extra) is not installed."""


class RunnerUnavailable(ModconvExportError, RuntimeError):
    """The backend cannot run on this machine; the message is the reason shown in the report."""


class CaptureError(RewriteError):
    """``torch.export`` could not capture the model (the reason names the Function or op in the way)."""


class Interrupted(BaseException):
    """A handled signal arrived. A BaseException, so that no library's ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class OutOfMemory(ModconvExportError):
    """The run needs more memory than this machine can give."""


class UnknownFamilyError(ModconvExportError):
    """A state_dict matches no registered family (or a family name is unknown)."""


class AmbiguousFamilyError(UnknownFamilyError, LoadError):
    """A state_dict matches several registered families: loading it as one of them would be a guess."""
