"""The one method interface: a design method streams progress and candidate crystals.

A method never touches the database or the queue: the job runner persists what it yields.
Same request, same seed, same weights: same candidates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ml.crystal import Crystal
from ml.request import DesignRequest


class RequestError(ValueError):
    """A request a method cannot serve; ``field`` is the dotted path the API reports (422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown parameters are rejected."""

    model_config = ConfigDict(extra="forbid")


def batch_on(configured: int | None, device: str, cpu: int, gpu: int) -> int:
    """A method's batch size: the request's, else ``gpu`` on a CUDA device (where the job
    relaxes each batch in one device pass, so larger batches pay the slow tail of a
    relaxation fewer times) and ``cpu`` elsewhere (small batches show results early)."""
    if configured is not None:
        return configured
    return gpu if str(device).startswith("cuda") else cpu


@dataclass
class Candidate:
    """A crystal proposed by a method, with the method's own predictions of its properties."""

    crystal: Crystal
    predicted: dict[str, float] = field(default_factory=dict)
    method_score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Its place in the method's output for this request, when the method can name it (the
    # same request regenerates it under the same key): a resumed job skips stored keys even
    # if the regenerated crystal differs by float noise. None: the content fingerprint.
    key: str | None = None


@dataclass
class Progress:
    phase: str
    step: int
    total: int
    best: float | None = None
    # The method's own figures for this step (e.g. MatInvent's reward, hits, oracle calls).
    detail: dict[str, Any] | None = None


@dataclass
class MethodContext:
    """What the runner hands a method: device, cancellation flag and reporting hooks."""

    device: str = "cpu"
    should_cancel: Callable[[], bool] = lambda: False
    # Oracles are created lazily and cached per process by the registry; methods ask by name.
    extra: dict[str, Any] = field(default_factory=dict)
    # Figures the method reports about its whole run (e.g. oracle calls and burden); the
    # runner adds them to the job summary as ``method_summary``.
    summary: dict[str, Any] = field(default_factory=dict)

    def check_cancelled(self) -> None:
        if self.should_cancel():
            raise Cancelled()


class Cancelled(Exception):
    """Raised inside a method when the job was cancelled between steps."""


MethodEvent = Progress | list[Candidate]


class DesignMethod(ABC):
    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Whether a large job may be split into shards that each rerun the method with the same
    # seed and keep a slice of its stream; not for a method that learns while it runs.
    shardable: ClassVar[bool] = True

    def validate(self, request: DesignRequest) -> MethodParams:
        """Validate ``request.params`` (pydantic errors name the field) and method-specific
        request checks (raise :class:`RequestError`)."""
        return self.Params.model_validate(request.params)

    @abstractmethod
    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        """Yield :class:`Progress` events and batches (lists) of :class:`Candidate`."""

    def missing_weights(self) -> list[str]:
        """What this method cannot run without on this server, in words (empty: ready). A
        method with missing weights refuses requests in :meth:`validate` (422), saying so."""
        return []

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "params_schema": self.Params.model_json_schema(),
        }
