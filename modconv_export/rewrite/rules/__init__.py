"""Built-in rewrite rules, one file each; importing this package registers them."""

from . import (  # noqa: F401  # noqa: F401
    blur,
    equal_lr,
    fused_leaky_relu,
    modulated_conv,
    scaled_equal_linear,
    style_conv_noise,
    stylegan2_clean_modconv,
    stylegan2_modconv,
    upfirdn2d,
)
