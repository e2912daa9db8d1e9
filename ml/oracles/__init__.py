"""Property oracles: the registry (``ml.oracles.registry``) and interface (``ml.oracles.base``)."""

from ml.oracles.base import Oracle, OracleInfo
from ml.oracles.registry import default_oracle_name, get_oracle, known_properties, list_oracles

__all__ = [
    "Oracle",
    "OracleInfo",
    "default_oracle_name",
    "get_oracle",
    "known_properties",
    "list_oracles",
]
