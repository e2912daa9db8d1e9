"""Evaluation of candidate crystals, as ``../shared/docs/evaluation.md`` defines it.

- :mod:`ml.evaluation.validity`: structural validity (distances, volume, cell bounds).
- charge neutrality and other request constraints: :mod:`ml.constraints`.
- :mod:`ml.evaluation.uniqueness`: duplicates within a set (StructureMatcher).
- :mod:`ml.evaluation.novelty`: matches against the reference set (all data-set structures).
- :mod:`ml.evaluation.hull`: energy above the CHGNet reference hull.
- :mod:`ml.evaluation.metrics`: S.U.N., metastable S.U.N. and hit rates.

Submodules are imported on use: this package imports nothing heavy.
"""
