"""Experiments that show caching problems and their fixes, returning tidy pandas frames."""

from ..testing import BackendError, Gate, SlowBackend
from .coherence import MODES, InvalidationResult, run_invalidation
from .compare import COMPARISON_COLUMNS, compare_policies
from .expiry import (
    ExpiryResult,
    expected_xfetch_recomputes,
    run_expiry,
    simulate_xfetch,
)
from .faults import FaultResult, run_crashed_holder, run_paused_holder
from .hitpath import HIT_PATH_COLUMNS, measure_hit_path
from .hotkeys import HotKeyResult, run_hot_key_writes, run_mass_expiry
from .latency import LATENCY_COLUMNS, measure_invalidation_latency
from .outage import OUTAGE_COLUMNS, OUTAGE_MODES, OutageResult, run_outage
from .plots import (
    plot_backend_calls,
    plot_backend_rate,
    plot_comparison,
    plot_events,
    plot_expiry_overview,
    plot_hit_path,
    plot_invalidation,
    plot_latency_cdf,
    plot_latency_distribution,
    plot_outage,
    plot_stampede_overview,
    plot_timeline,
    plot_timelines,
    plot_xfetch_sweep,
)
from .reads import READ_COLUMNS, measure_reads, plot_reads
from .stampede import (
    REQUEST_COLUMNS,
    StampedeResult,
    run_arrivals,
    run_stampede,
    sweep_stampede,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "HIT_PATH_COLUMNS",
    "LATENCY_COLUMNS",
    "MODES",
    "OUTAGE_COLUMNS",
    "OUTAGE_MODES",
    "READ_COLUMNS",
    "REQUEST_COLUMNS",
    "BackendError",
    "ExpiryResult",
    "FaultResult",
    "Gate",
    "HotKeyResult",
    "InvalidationResult",
    "OutageResult",
    "SlowBackend",
    "StampedeResult",
    "compare_policies",
    "expected_xfetch_recomputes",
    "measure_hit_path",
    "measure_invalidation_latency",
    "measure_reads",
    "plot_backend_calls",
    "plot_backend_rate",
    "plot_comparison",
    "plot_events",
    "plot_expiry_overview",
    "plot_hit_path",
    "plot_invalidation",
    "plot_latency_cdf",
    "plot_latency_distribution",
    "plot_outage",
    "plot_reads",
    "plot_stampede_overview",
    "plot_timeline",
    "plot_timelines",
    "plot_xfetch_sweep",
    "run_arrivals",
    "run_crashed_holder",
    "run_expiry",
    "run_hot_key_writes",
    "run_invalidation",
    "run_mass_expiry",
    "run_outage",
    "run_paused_holder",
    "run_stampede",
    "simulate_xfetch",
    "sweep_stampede",
]
