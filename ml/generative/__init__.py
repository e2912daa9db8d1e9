"""Code shared by generative methods: fractional-coordinate conventions (``periodic``), the
Wyckoff (space group + orbits) crystal representation (``wyckoff``), Wyckoff-assignment /
space-group proposal (``assignment``), and the training step with its EMA and release export
(``training``)."""
