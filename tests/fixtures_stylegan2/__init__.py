"""Test fixtures for the StyleGAN2 rules (GFPGAN ``stylegan2_clean_arch``, basicsr ``stylegan2_arch``).

* :mod:`.reference_ops` -- our pure-torch references for basicsr's CUDA ops (upfirdn2d, fused bias
  + leaky ReLU), written from their documented semantics;
* :mod:`.layers` -- our own small copies of the upstream layers (same attribute names, shapes and
  arithmetic), so the rules are tested without the upstream packages;
* :mod:`.upstream` -- loads the real upstream architecture files from the PyPI archives
  (gfpgan 1.3.8 wheel, basicsr 1.4.2 sdist) with their broken imports shimmed, when available.
"""
