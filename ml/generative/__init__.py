"""Code shared by generative methods: the Wyckoff (space group + orbits) crystal representation
(``wyckoff``) and Wyckoff-assignment / space-group proposal (``assignment``)."""
