"""Validated parameters of the ``smoacs`` method (unknown keys are rejected)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from ml.methods.base import MethodParams

__all__ = ["CPU_PASS", "GPU_PASS", "REFINE_AUTO_MAX", "SmoacsParams"]

CPU_PASS = 256
GPU_PASS = 1024
# Most candidates the method may be asked for (the job's num_candidates x its oversample) and
# still run the judged refinement by default. Its rounds relax up to refine_proposals swaps
# per design that misses the request, with the judge's full protocol. H200, whole jobs with
# relaxation (RESULTS, eleventh session): 256 refined 120 s (114 S.U.N. hits); 1,024
# unrefined 105 s (160), with one round of one proposal 205 s (324), with the default two
# rounds of four > 320 s. A large job buys breadth within ~2 minutes; refine_rounds set
# explicitly always applies.
REFINE_AUTO_MAX = 256


class SmoacsParams(MethodParams):
    """Defaults: the paper's Table 1 setting (200 steps, T 1 -> 0.01, Adam with a cosine
    schedule, mutation of the worst candidates) tuned on CPU for the MEGNet predictors (32
    candidates, targets 1-3 eV): exponential rather than linear temperature decay, a
    straight-through discrete phase from 20% of the run with the best discrete state kept,
    five mutation rounds replacing every candidate outside the top 20% (and those meeting the
    objectives), and a warm learning-rate restart for mutated copies."""

    # Differentiable predictors: "chgnet" (default) = CHGNet 0.3.0 formation energy and the
    # trained band-gap model gap-chgnet-ft on its backbone, the service's own judges; "megnet"
    # = the paper's MEGNet pair (its protocol; no stability term, no final relaxation).
    predictor: Literal["chgnet", "megnet"] = "chgnet"
    # Stability term (chgnet): weights of the formation energy (eV/atom), RMS force (eV/Å) and
    # stress norm (GPa) in every candidate's loss.
    stability_energy: float = Field(default=0.2, ge=0, le=100.0)
    stability_force: float = Field(default=0.2, ge=0, le=100.0)
    stability_stress: float = Field(default=0.01, ge=0, le=100.0)
    # What the geometry (lattice, coordinates) descends (chgnet): "all" = the whole loss;
    # "stability" = the stability term and the geometry penalty only, so it tracks the
    # energy minimum (a relaxation alongside the design) and the property terms act through
    # the species. Measured (RESULTS, eighth session): less gap drift at 1 eV, fewer designs in
    # the band, no gain in joint success after relaxation; hence not the default.
    geometry_loss: Literal["all", "stability"] = "all"
    # Final batched CHGNet relaxation (FIRE, positions and cell) of the designs, which are
    # then re-scored by the predictors; "auto": on with the chgnet predictor when the job
    # itself does not relax (with relax: true the pipeline relaxes every candidate with the
    # judge and re-scores it with the service's oracles: a second relaxation here only cost
    # time, most of a 256-candidate job's on the H200).
    relax_final: Literal["auto", "on", "off"] = "auto"
    relax_steps: int = Field(default=100, ge=1, le=2000)
    # Polish rounds (ml.methods.smoacs.polish): relax the designs with the job's judge, score
    # them there, re-optimise from the relaxed geometry for polish_steps cold, discrete steps
    # at polish_lr_scale x the learning rates, relax again; each candidate returns its best
    # relaxed design. 0 = off.
    polish_rounds: int = Field(default=0, ge=0, le=5)
    polish_steps: int = Field(default=40, ge=1, le=1000)
    polish_lr_scale: float = Field(default=0.3, gt=0, le=1.0)
    # FIRE steps of each polish relaxation (the job's protocol: 300, fmax 0.1).
    polish_relax_steps: int = Field(default=300, ge=1, le=2000)
    # Judge-in-the-loop species refinement (ml.methods.smoacs.refine), after the gradient
    # stage and any polish: the designs are relaxed with the job's judge and scored by the
    # service's oracles; for refine_rounds rounds, each design that misses the request tries
    # element swaps on one site group (same oxidation numbers, so neutrality stays exact; the
    # request's elements; the species_per_group likeliest by the substitution model), the
    # refine_proposals best of them by the unrelaxed judged loss are relaxed and scored, and
    # the design moves to the best if it is better and its formula is not another design's.
    # The returned crystals are relaxed by the judge. None: 2 rounds with the chgnet
    # predictor for jobs of up to REFINE_AUTO_MAX candidates, off (0) above that and with
    # megnet (the paper's protocol). Measured (RESULTS, ninth session, CPU, 32 x 60): joint
    # success after the job's relaxation 0.16 -> 0.72 (1 eV) and 0.16 -> 0.91 (2 eV), for 2-3x
    # the CPU wall time of design plus the job's relaxation.
    refine_rounds: int | None = Field(
        default=None,
        ge=0,
        le=5,
        description="judged refinement rounds; default: 2 when the method is asked for at most "
        f"{REFINE_AUTO_MAX} candidates (num_candidates x the job's oversample; chgnet "
        "predictor), none above that and with megnet",
    )
    refine_proposals: int = Field(default=4, ge=1, le=32)
    refine_species_per_group: int = Field(default=6, ge=1, le=40)
    # Also propose paired swaps on two groups whose oxidation numbers change in amounts that
    # cancel (Mg2+ O2- -> Na+ F-, Sr2+ Ti4+ -> K+ Nb5+): up to refine_species_per_group per
    # design, beside the single swaps.
    refine_pairs: bool = True
    # Design this many times num_candidates in the gradient stage and return the best by the
    # judged loss (distinct formulas first); > 1 implies the judged relaxation of the designs
    # (the refinement stage with refine_rounds rounds). Costs oversample x the design time.
    oversample: float = Field(default=1.0, ge=1.0, le=8.0)
    # Processes building CHGNet graphs during the relaxation (0: in this process).
    relax_workers: int = Field(default=0, ge=0, le=64)
    relax_fmax: float = Field(default=0.1, gt=0, le=10.0)
    # Per-copy jitter of a reused template (coordinates Å, relative lengths, logit U(0, x)).
    jitter_coords: float = Field(default=0.1, ge=0, le=2.0)
    jitter_lattice: float = Field(default=0.03, ge=0, le=0.5)
    jitter_logits: float = Field(default=1.0, ge=0, le=10.0)
    steps: int = Field(default=200, ge=1, le=5000)
    # Candidates optimised (and then relaxed by the job) together; None: 256 on a CPU, up to
    # 1,024 on a GPU, where one pass of 1,024 takes about twice as long as one of 256 (H200:
    # a 1,024-candidate job in 135 s in one pass; in four it relaxes four times).
    batch_size: int | None = Field(default=None, ge=1, le=4096, description="candidates per pass")
    # Adam learning rates per variable group.
    lr_lattice: float = Field(default=0.02, gt=0, le=1.0)
    lr_angles: float = Field(default=0.005, gt=0, le=1.0)
    lr_coords: float = Field(default=0.005, gt=0, le=1.0)
    lr_elements: float = Field(default=0.1, gt=0, le=10.0)
    lr_patterns: float = Field(default=0.05, gt=0, le=10.0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    temperature_start: float = Field(default=1.0, gt=0, le=100.0)
    temperature_end: float = Field(default=0.01, gt=0, le=100.0)
    temperature_schedule: Literal["linear", "exponential"] = "exponential"
    # Element logits start equal (a uniform distribution) plus this much U(0, 1) noise.
    logit_init_noise: float = Field(default=0.0, ge=0, le=10.0)
    # From this fraction of the run on, the forward pass sees the argmax structure with
    # straight-through gradients, and each candidate's best discrete state is kept.
    straight_through_from: float = Field(default=0.2, ge=0, le=1.0)
    keep_best: bool = True
    # Mutation: fractions of the run after which the worst candidates are replaced.
    mutation_at: list[float] = Field(
        default_factory=lambda: [0.3, 0.45, 0.6, 0.75, 0.9], max_length=20
    )
    mutation_top_rate: float = Field(default=0.2, gt=0, le=1.0)
    mutation_replace_prob: float = Field(default=1.0, ge=0, le=1.0)
    mutation_noise: float = Field(default=0.05, ge=0, le=1.0)
    # Neighbour list: rebuilt every this many steps (and after mutation and at the end).
    graph_update_every: int = Field(default=10, ge=1, le=1000)
    neighbor_skin: float = Field(default=1.0, ge=0, le=3.0)
    # Initialisation.
    template_source: Literal["auto", "dataset", "user", "perovskite"] = "auto"
    template_pool: int = Field(default=3000, ge=10, le=100_000, description="data-set rows read")
    template_max_sites: int = Field(default=20, ge=1, le=200)
    init_geometry: Literal["template", "random"] = "template"
    masks: bool = True
    # Sites with the same template element (perovskite: the same role) share one element-logit
    # row and oxidation number, so designs keep the template's few-element stoichiometry; a
    # tied perovskite supercell is one ABX3 composition (one neutrality group, so
    # per_cell_patterns has no effect). False: every site picks its own element.
    tie_sites: bool = True
    max_patterns: int = Field(default=8, ge=1, le=64)
    # Perovskite family mode.
    supercell: int = Field(default=1, ge=1, le=4)
    perovskite_lengths: tuple[float, float] = (3.6, 4.6)
    perovskite_coord_bound: float = Field(default=0.15, gt=0, le=0.5)
    per_cell_patterns: bool = True
    tolerance_window: tuple[float, float] = (0.8, 1.0)
    # Weight of the tolerance-factor window term (its hinge is small next to gap errors).
    tolerance_weight: float = Field(default=5.0, gt=0, le=1000.0)
    # Boxes and extra terms.
    length_bounds: tuple[float, float] = (2.0, 10.0)
    threshold_margin: float = Field(default=0.1, ge=0, le=10.0)
    # Floor (A) of the geometry penalty on interatomic distances. 1.6 rather than 1.0: MEGNet
    # rates cramped cells well but CHGNet does not; with tied sites, 1.6 tripled the share of
    # designs that also pass CHGNet-Eform (benchmarks/RESULTS.md, SMOACS tied sites, H100).
    min_distance: float = Field(default=1.6, ge=0, le=3.0)
    geometry_weight: float = Field(default=1.0, ge=0, le=100.0)
    progress_every: int = Field(default=10, ge=1, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> SmoacsParams:
        if any(not 0.0 < f < 1.0 for f in self.mutation_at):
            raise ValueError("mutation_at: fractions must lie strictly between 0 and 1")
        for name in ("perovskite_lengths", "tolerance_window", "length_bounds"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"{name}: need 0 < low < high, got ({lo}, {hi})")
        return self

    def relaxes(self, job_relaxes: bool) -> bool:
        """Whether the method relaxes its designs itself (``job_relaxes``: the request's
        ``relax``, after which the pipeline relaxes them anyway)."""
        return self.relax_final == "on" or (
            self.relax_final == "auto" and self.predictor == "chgnet" and not job_relaxes
        )

    def rounds(self, num_candidates: int) -> int:
        """Refinement rounds of a job of ``num_candidates``: ``refine_rounds``, or by default
        2 with the chgnet predictor up to :data:`REFINE_AUTO_MAX` candidates, else none."""
        if self.refine_rounds is not None:
            return self.refine_rounds
        return 2 if self.predictor == "chgnet" and num_candidates <= REFINE_AUTO_MAX else 0

    def refines(self, num_candidates: int) -> bool:
        """Whether the judge-in-the-loop stage runs (refinement rounds or oversampling)."""
        return self.rounds(num_candidates) > 0 or self.oversample > 1.0

    def designed(self, count: int) -> int:
        """Candidates the gradient stage designs for ``count`` returned ones."""
        return math.ceil(count * self.oversample - 1e-9)

    def pass_size(self, device: str) -> int:
        """Candidates per optimisation pass on ``device``."""
        if self.batch_size is not None:
            return self.batch_size
        return GPU_PASS if str(device).startswith("cuda") else CPU_PASS

    def straight_through_start(self) -> int:
        return round(self.straight_through_from * self.steps)

    def mutation_steps(self) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(f * self.steps)) for f in self.mutation_at}))
