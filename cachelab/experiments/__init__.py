"""Experiments that show caching problems and their fixes, returning tidy pandas frames."""

from ..testing import BackendError, Gate, SlowBackend
from .coherence import MODES, InvalidationResult, run_invalidation
from .expiry import (
    ExpiryResult,
    expected_xfetch_recomputes,
    run_expiry,
    simulate_xfetch,
)
from .faults import FaultResult, run_crashed_holder, run_paused_holder
from .hotkeys import HotKeyResult, run_hot_key_writes, run_mass_expiry
from .latency import LATENCY_COLUMNS, measure_invalidation_latency
from .plots import (
    plot_backend_calls,
    plot_backend_rate,
    plot_events,
    plot_expiry_overview,
    plot_invalidation,
    plot_latency_cdf,
    plot_latency_distribution,
    plot_stampede_overview,
    plot_timeline,
    plot_timelines,
    plot_xfetch_sweep,
)
from .reads import READ_COLUMNS, measure_reads, plot_reads
from .stampede import REQUEST_COLUMNS, StampedeResult, run_stampede, sweep_stampede

__all__ = [
    "LATENCY_COLUMNS",
    "MODES",
    "READ_COLUMNS",
    "REQUEST_COLUMNS",
    "BackendError",
    "ExpiryResult",
    "FaultResult",
    "Gate",
    "HotKeyResult",
    "InvalidationResult",
    "SlowBackend",
    "StampedeResult",
    "expected_xfetch_recomputes",
    "measure_invalidation_latency",
    "measure_reads",
    "plot_backend_calls",
    "plot_backend_rate",
    "plot_events",
    "plot_expiry_overview",
    "plot_invalidation",
    "plot_latency_cdf",
    "plot_latency_distribution",
    "plot_reads",
    "plot_stampede_overview",
    "plot_timeline",
    "plot_timelines",
    "plot_xfetch_sweep",
    "run_crashed_holder",
    "run_expiry",
    "run_hot_key_writes",
    "run_invalidation",
    "run_mass_expiry",
    "run_paused_holder",
    "run_stampede",
    "simulate_xfetch",
    "sweep_stampede",
]
