"""Experiments that show caching problems and their fixes, returning tidy pandas frames."""

from ..testing import BackendError, Gate, SlowBackend
from .plots import plot_backend_calls, plot_latency_cdf, plot_stampede_overview, plot_timeline
from .stampede import REQUEST_COLUMNS, StampedeResult, run_stampede, sweep_stampede

__all__ = [
    "REQUEST_COLUMNS",
    "BackendError",
    "Gate",
    "SlowBackend",
    "StampedeResult",
    "plot_backend_calls",
    "plot_latency_cdf",
    "plot_stampede_overview",
    "plot_timeline",
    "run_stampede",
    "sweep_stampede",
]
