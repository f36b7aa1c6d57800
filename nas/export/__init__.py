"""A neck as a standalone module: the exported folder and the code generator."""
