"""Built-in rewrite rules, one file each; importing this package registers them."""

from . import blur, equal_lr, modulated_conv  # noqa: F401
