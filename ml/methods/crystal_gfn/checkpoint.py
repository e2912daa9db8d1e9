"""Where the Crystal-GFN weights live: the proxy (``crystal_gfn_proxy.pt``) and pretrained
GFlowNets (``crystal_gfn-<name>.pt``), in ``ml/weights/`` or ``<models_dir>/crystal_gfn/``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from ml.methods.crystal_gfn.gfn import read_gfn
from ml.methods.crystal_gfn.proxy import ProxyModel, fingerprint, load_proxy
from ml.settings import get_ml_settings

__all__ = ["PROXY_FILE", "WEIGHTS_DIR", "find_proxy", "load_proxy_cached", "pretrained"]

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
PROXY_FILE = "crystal_gfn_proxy.pt"
PRETRAINED_GLOB = "crystal_gfn-*.pt"


def _roots() -> list[Path]:
    return [WEIGHTS_DIR, get_ml_settings().models_dir / "crystal_gfn"]


def find_proxy() -> Path:
    for root in _roots():
        if (root / PROXY_FILE).is_file():
            return root / PROXY_FILE
    raise FileNotFoundError(f"no {PROXY_FILE} in {WEIGHTS_DIR} or <models_dir>/crystal_gfn")


@cache
def load_proxy_cached(path: Path, device: str) -> tuple[ProxyModel, dict[str, Any], str]:
    """(proxy, its info, weight fingerprint), loaded once per process and device."""
    model, info = load_proxy(path, device)
    return model, info, fingerprint(model)


def pretrained_files() -> list[Path]:
    return sorted(p for root in _roots() if root.is_dir() for p in root.glob(PRETRAINED_GLOB))


@cache
def _header(path: Path, mtime_ns: int) -> dict[str, Any]:
    payload = read_gfn(path)
    return {k: payload[k] for k in ("env", "reward", "proxy", "info")}


def pretrained(env_key: str, reward_key: str, proxy_id: str) -> Path | None:
    """The pretrained GFlowNet for exactly this environment, reward and proxy, if any."""
    for path in pretrained_files():
        try:
            head = _header(path, path.stat().st_mtime_ns)
        except (ValueError, RuntimeError, KeyError, OSError):
            continue  # not a Crystal-GFN checkpoint: ignored
        if (head["env"], head["reward"], head["proxy"]) == (env_key, reward_key, proxy_id):
            return path
    return None


@cache
def load_pretrained(path: Path, device: str):  # type: ignore[no-untyped-def]
    from ml.methods.crystal_gfn.gfn import load_gfn

    payload = read_gfn(path)
    return load_gfn(payload, device), dict(payload.get("info", {}))
