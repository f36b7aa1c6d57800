"""The networks a neck is made of and sits on: the genotype's ops, its builder, the backbone body."""
