"""Typed exceptions, so callers (the CLI above all) can turn usage errors into one clear line."""

from __future__ import annotations


class ModconvExportError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class RewriteError(ModconvExportError):
    """A module looked like a layer the toolkit rewrites but could not be rewritten exactly."""


class ExportError(ModconvExportError):
    """The exporter failed or produced a file that does not meet the toolkit's guarantees."""


class LoweringError(ModconvExportError):
    """An ``autograd.Function`` lowering was registered wrongly or cannot be applied."""


class LoadError(ModconvExportError):
    """A model file cannot be loaded: missing, unreadable, unsafe without trust, or not a model we know."""
