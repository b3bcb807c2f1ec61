"""Built-in rewrite rules, one file each; importing this package registers them."""

from . import blur, equal_lr, modulated_conv  # noqa: F401
from . import fused_leaky_relu, scaled_equal_linear, style_conv_noise, stylegan2_clean_modconv, stylegan2_modconv, upfirdn2d  # noqa: F401
