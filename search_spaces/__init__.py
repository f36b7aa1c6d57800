"""Search spaces: one module a space, mapping named decisions to and from a genotype."""
