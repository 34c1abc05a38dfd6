"""Every notebook documents the range of each parameter beside it, and refuses values outside it.

The ranges live in :mod:`cachelab.experiments.params` (what the notebooks' checks were written
for); the comment beside each value in a notebook's ``parameters`` cell must say the same, and the
cell right after it must check them before anything runs. No kernel is started here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from cachelab import ConfigurationError, classroom
from cachelab.experiments.params import NOTEBOOK_PARAMETERS, Flag, Number, Values, check_parameters

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECK_CALL = re.compile(r'check_parameters\("(\w+)", globals\(\)\)')


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def parameters(path: Path) -> tuple[int, dict[str, tuple[object, str]]]:
    """(index among code cells, {NAME: (default, comment)}) of the notebook's parameters cell."""
    cells = code_cells(path)
    index = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    found = {}
    for line in "".join(cells[index]["source"]).splitlines():
        name, _, rest = line.partition("=")
        value, _, comment = rest.partition("#")
        found[name.strip()] = (ast.literal_eval(value.strip()), comment.strip())
    return index, found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_parameter_documents_the_range_its_checks_were_written_for(path):
    number = classroom.read_notebook(path).number
    assert number in NOTEBOOK_PARAMETERS, f"{path.name}: no ranges in cachelab.experiments.params"
    specs, _rules = NOTEBOOK_PARAMETERS[number]
    _index, found = parameters(path)
    assert set(found) == set(specs), f"{path.name}: parameters and ranges name different values"
    for name, (_default, comment) in found.items():
        assert comment == specs[name].text, (
            f"{path.name}: {name} is documented as {comment!r}, checked as {specs[name].text!r}"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_cell_after_the_parameters_checks_them_and_the_defaults_pass(path):
    index, found = parameters(path)
    following = "".join(code_cells(path)[index + 1]["source"])
    match = CHECK_CALL.search(following)
    assert match, f"{path.name}: the cell after the parameters must call check_parameters"
    assert match.group(1) == classroom.read_notebook(path).number
    check_parameters(match.group(1), {name: value for name, (value, _c) in found.items()})


def defaults(number: str) -> dict:
    path = next(p for p in NOTEBOOKS if classroom.read_notebook(p).number == number)
    return {name: value for name, (value, _comment) in parameters(path)[1].items()}


@pytest.mark.parametrize(
    ("number", "change", "message"),
    [
        ("01", {"CLIENTS": 9000}, "CLIENTS = 9000 is outside its documented range 1-5,000"),
        ("01", {"CLIENTS": 2.5}, "CLIENTS must be a whole number from 1-5,000"),
        ("01", {"INSTANCES": 8, "CLIENTS": 4}, "INSTANCES (8) must be at most CLIENTS (4)"),
        ("01", {"CLIENT_COUNTS": []}, "CLIENT_COUNTS has 0 values; it takes 1-6 values"),
        ("01b", {"READS": 500, "CONCURRENCY": [1, 1000]}, "READS (500) must be at least the"),
        ("01b", {"CONCURRENCY": [10, 10]}, "CONCURRENCY ([10, 10]) lists a value twice"),
        ("01b", {"CONCURRENCY": [1, 2, 3, 4, 5, 6]}, "CONCURRENCY has 6 values; it takes 1-5"),
        ("02", {"PROCESSES": "yes"}, "PROCESSES must be True or False"),
        ("03", {"LIVE_BETAS": [1.0, 9.0]}, "every value of LIVE_BETAS = 9.0 is outside"),
        ("03", {"DURATION_S": 1.0}, "DURATION_S (1.0) must be at least twice TTL_S"),
        ("04", {"KILL_AT_S": 2.4}, "must end at least 0.5 s before DURATION_S"),
    ],
)
def test_out_of_range_is_one_clear_sentence_before_anything_runs(number, change, message):
    with pytest.raises(ConfigurationError) as raised:
        check_parameters(number, defaults(number) | change)
    text = str(raised.value)
    assert message in text
    assert text.count(". ") == 0 and "\n" not in text  # one sentence


def test_a_missing_parameter_says_to_run_the_parameters_cell():
    with pytest.raises(ConfigurationError, match="defines no CLIENTS"):
        check_parameters("01", {})


def test_range_texts_read_like_the_comments():
    assert Number(1, 5000).text == "1-5,000"
    assert Number(0.05, 0.5, whole=False).text == "0.05-0.5"
    assert Values(Number(1, 5000), 1, 6).text == "1-6 values, each 1-5,000"
    assert Flag().text == "True or False"


def test_cachelab_notebook_run_refuses_an_out_of_range_value_before_a_kernel_starts():
    notebook = classroom.read_notebook(next(p for p in NOTEBOOKS if p.stem.startswith("01_")))
    with pytest.raises(ConfigurationError, match="CLIENTS = 9000 is outside"):
        classroom.resolve_parameters(notebook, [("CLIENTS", "9000")])
    assert classroom.resolve_parameters(notebook, [("CLIENTS", "50")]) == {"CLIENTS": 50}
