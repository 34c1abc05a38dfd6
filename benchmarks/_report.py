"""Shared by the benchmark scripts: keep each benchmark's section of docs/benchmarks.md current."""

from __future__ import annotations

from pathlib import Path

__all__ = ["machine_line", "others_cpus_clause", "write_section"]


def write_section(path: Path, section: str, name: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (between markers), keep the rest.

    The section sits between ``<!-- begin NAME -->`` and ``<!-- end NAME -->``; a file or a
    section that does not exist yet is created (the new section goes at the end).
    """
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def others_cpus_clause(setup: dict) -> str:
    """``"; other programs kept X of the N CPUs busy ..."`` for a report's setup line, or ``""``
    when the run could not measure it: a reader must know how quiet the machine was."""
    if setup.get("others_cpus") is None:
        return ""
    return (
        f"; other programs kept {setup['others_cpus']:.2f} of the {setup['cpus']} CPUs busy "
        "on average during the run"
    )


def machine_line(before: tuple[float, float, float]) -> str:
    """``"Machine: N CPUs, load average ... before and ... after (date)."``: how busy it was."""
    import datetime
    import os

    after = os.getloadavg()
    return (
        f"Machine: {os.cpu_count()} CPUs, load average {before[0]:.2f} (1 min) before and "
        f"{after[0]:.2f} after ({datetime.date.today().isoformat()})."
    )
