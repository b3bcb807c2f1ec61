"""Every ``nn.Module`` of the toolkit, by what it serves.

* :mod:`.seed` -- the seed / LATS reference layers (upstream's arithmetic, for families and tests);
* :mod:`.seed_forms` -- their export forms (:class:`~.seed_forms.SeedModulatedConvForm`, the depthwise blur);
* :mod:`.stylegan2_forms` -- export forms of the GFPGAN / basicsr StyleGAN2 layers;
* :mod:`.gfpgan` -- GFPGAN's clean StyleGAN2 layers, key-compatible with upstream;
* :mod:`.graph_form` -- :class:`~.graph_form.GraphExportForm`, the export form of a graph-level rewrite;
* :mod:`.nvlabs` -- :class:`~.nvlabs.NVlabsGenerator`, an NVlabs generator with its exported calling convention;
* :mod:`.ops` -- the toolkit's one custom op (the blur's depthwise convolution).
"""
