"""Every notebook, run the way a student runs it: JupyterLab in a real browser.

nbval proves the notebooks execute; this proves they work in the classroom surface. One
``jupyter lab`` server (root: a temporary copy of ``notebooks/``) and one headless Chromium, driven
by Playwright, serve the whole module. For each ``notebooks/*.ipynb`` present at run time the test
opens a copy with its outputs cleared, clicks Run > Run All Cells, waits for the kernel to go idle,
saves through File > Save Notebook, and asserts what the student would see:

- every code cell shows its execution count, 1..n top to bottom;
- no cell raised (an ``error`` output in the saved notebook, or a traceback printed on stderr;
  warnings on stderr are reported, not failed);
- every chart the committed notebook shows is rendered as a loaded ``<img>`` in the same cell;
- every Mermaid diagram (a ```` ```mermaid ```` block in a markdown cell) is drawn, not shown as
  an error (JupyterLab >= 4.1 renders them).

Notebooks run one after another and each kernel is shut down (and its process seen gone) before
the next one starts: several notebooks measure timings and must not share the CPU with another.
Full-page screenshots go to ``tests/.browser-screenshots/`` (git-ignored).

Needs the system Chromium (Playwright never downloads a browser here): ``apt-get install chromium``
or ``CHROMIUM_PATH=/path/to/chromium``. Without it the tests skip, unless
``CACHELAB_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import free_port, pid_alive

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = Path(__file__).resolve().parent / ".browser-screenshots"

RUN_TIMEOUT_S = 240  # Run All Cells to kernel idle, per notebook (the slowest take ~2 min)
STARTUP_TIMEOUT_S = 120  # jupyter lab answering, a notebook's kernel idle
UI_TIMEOUT_MS = 30_000  # a menu opening, a save finishing
DEBIAN_CHROMIUM = "/usr/bin/chromium"  # Debian's `chromium` package
VIEWPORT = {"width": 1400, "height": 900}
MAX_SCREENSHOT_HEIGHT = 32_000  # px; a notebook taller than this is cut at the bottom

# JupyterLab settings overrides (overrides.json in a temporary app settings dir): no news popup or
# update check covering the page, and every cell rendered (no lazy windowing) so the DOM holds all
# prompts and charts and the screenshot shows the whole notebook.
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}

# One entry per code cell of the open notebook, in order: the prompt text, the charts (loaded
# <img> inside a PNG output), the text of stderr-rendered outputs (tracebacks and stderr streams).
READ_CELLS_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  return [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(cell => {
    const images = [...cell.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="image/png"] img')];
    return {
      prompt: (cell.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
      collapsed: !!cell.querySelector('.jp-InputPlaceholder'),
      images: images.length,
      loaded: images.filter(img => img.complete && img.naturalWidth > 0).length,
    };
  });
}"""

# One entry per markdown cell of the open notebook: Mermaid diagrams drawn, and ones that failed.
READ_DIAGRAMS_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  return [...panel.querySelectorAll('.jp-Notebook .jp-MarkdownCell')].map(cell => ({
    drawn: [...cell.querySelectorAll('.jp-RenderedMermaid:not(.jp-mod-warning)')]
      .filter(d => d.querySelector('svg, img')).length,
    failed: [...cell.querySelectorAll('.jp-RenderedMermaid.jp-mod-warning')]
      .map(d => d.textContent.slice(0, 300)),
  }));
}"""

RUN_STARTED_JS = """() => [...document.querySelectorAll(
  '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')]
  .some(p => /[*\\d]/.test(p.textContent))"""

RUN_FINISHED_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const status = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
  if (!status || status.dataset.status !== 'idle') return false;
  const running = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .some(p => p.textContent.includes('*'));
  const decoding = [...panel.querySelectorAll('.jp-OutputArea-output img')]
    .some(img => !img.complete);
  return !running && !decoding;
}"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ERROR_ON_STDERR = re.compile(
    r"Traceback \(most recent call last\)|^\w*(?:Error|Exception)\b|exception was never retrieved"
    r"|^Exception ignored",
    re.MULTILINE,
)


# --- the browser and the server -----------------------------------------------------------------


def chromium_executable() -> str | None:
    """The system Chromium: ``CHROMIUM_PATH`` when set, else ``chromium`` on PATH or in /usr/bin."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"CHROMIUM_PATH={configured} is not an executable file; fix or unset it")
        return configured
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access(DEBIAN_CHROMIUM, os.X_OK):
        found = DEBIAN_CHROMIUM  # PATH without /usr/bin
    return found


def browser_unavailable(reason: str) -> None:
    """Skip, saying how to enable the test; in CI (CACHELAB_REQUIRE_BROWSER=1) fail instead."""
    message = (
        f"{reason}: the browser tests need the system Chromium "
        "(`apt-get install chromium`, or set CHROMIUM_PATH=/path/to/chromium); "
        "Playwright's own browser download is not used"
    )
    if os.environ.get("CACHELAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message} (CACHELAB_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(message)


def children_of(parent: int) -> list[int]:
    """Every living process whose parent is ``parent`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
                children.append(int(stat.parent.name))
    return children


def wait_until(condition, timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


@dataclass
class LabServer:
    """A ``jupyter lab`` subprocess serving ``root``; talks to it over its REST API."""

    root: Path
    process: subprocess.Popen
    url: str
    token: str
    log: Path
    kernel_pids: set[int] = field(default_factory=set)

    def api(self, method: str, path: str):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kernel_processes(self) -> list[int]:
        pids = children_of(self.process.pid)
        self.kernel_pids.update(pids)
        return pids

    def wait_for_one_idle_kernel(self, name: str) -> None:
        """The notebook's kernel started, is connected to the page and idle; no other runs."""

        def ready() -> bool:
            try:
                kernels = self.api("GET", "/api/kernels")
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    raise
                # jupyter_server answers 500 when it lists a kernel that is still starting (its
                # last_activity is not set yet): a race in the server, over on the next poll
                return False
            return bool(kernels) and all(
                k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels
            )

        started = wait_until(ready, STARTUP_TIMEOUT_S, interval_s=0.5)
        kernels = self.api("GET", "/api/kernels")
        assert started, f"{name}: its kernel did not become idle; the server has {kernels}"
        assert len(kernels) == 1, f"{name}: expected its one kernel, the server runs {kernels}"

    def shut_down_kernels(self) -> None:
        """Delete every session and kernel, then wait until no kernel process is left."""
        for session in self.api("GET", "/api/sessions"):
            with contextlib.suppress(urllib.error.HTTPError):
                self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            with contextlib.suppress(urllib.error.HTTPError):
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
        gone = wait_until(lambda: not self.kernel_processes(), 30)
        assert gone, f"kernel processes {self.kernel_processes()} outlived their shutdown"
        assert self.api("GET", "/api/kernels") == []

    def stop(self) -> None:
        """Shut down kernels and server; SIGTERM/SIGKILL what does not stop by itself."""
        with contextlib.suppress(Exception):
            self.shut_down_kernels()
        with contextlib.suppress(Exception):
            self.api("POST", "/api/shutdown")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        for pid in self.kernel_pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_lab(base: Path) -> LabServer:
    root = base / "notebooks"
    settings = base / "app-settings"
    for folder in (root, settings):
        folder.mkdir()
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES))
    port, token = free_port(), secrets.token_hex(16)
    # Private Jupyter dirs: no user config, runtime files or workspaces leak in or out.
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        IPYTHONDIR=str(base / "ipython"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        f"--LabApp.app_settings_dir={settings}",
        f"--LabApp.user_settings_dir={base / 'user-settings'}",
        f"--LabApp.workspaces_dir={base / 'workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    log = base / "jupyter.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    lab = LabServer(root, process, f"http://127.0.0.1:{port}", token, log)

    def answers() -> bool:
        if process.poll() is not None:
            return True
        with contextlib.suppress(OSError):
            lab.api("GET", "/api/status")
            return True
        return False

    if not wait_until(answers, STARTUP_TIMEOUT_S) or process.poll() is not None:
        lab.stop()
        pytest.fail(f"jupyter lab did not start; its log ends with:\n{lab.log_tail()}")
    return lab


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        browser_unavailable("playwright is not installed (it is in the dev group: `uv sync`)")
    path = chromium_executable()
    if path is None:
        browser_unavailable("no Chromium found (no `chromium` on PATH, CHROMIUM_PATH unset)")
    return path


@pytest.fixture(scope="module")
def timings(request):
    """Seconds per notebook, written under the test report when the module is done."""
    seconds: dict[str, dict[str, float]] = {}
    yield seconds
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not seconds:
        return
    total = sum(parts["total"] for parts in seconds.values())
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("browser: seconds per notebook (open = page to idle kernel)")
        for name, parts in seconds.items():
            spent = ", ".join(f"{part} {value:.1f}" for part, value in parts.items())
            reporter.write_line(f"  {name}: {spent}")
        reporter.write_line(f"  all {len(seconds)} notebooks: {total:.1f} s")


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    server = start_lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        for plugin, overrides in LAB_OVERRIDES.items():
            schema = server.api("GET", f"/lab/api/settings/{plugin}")["schema"]["properties"]
            applied = {key: schema[key]["default"] for key in overrides}
            assert applied == overrides, f"JupyterLab ignored the overrides.json for {plugin}"
        yield server
    finally:
        server.stop()
    survivors = [pid for pid in [server.process.pid, *server.kernel_pids] if pid_alive(pid)]
    assert not survivors, f"processes left behind by jupyter lab: {survivors}"


@contextlib.contextmanager
def launched(chromium: str):
    """The headless system Chromium, closed on the way out (tests/test_site.py uses it too)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def browser(chromium, lab):
    with launched(chromium) as instance:
        yield instance


# --- reading a notebook -------------------------------------------------------------------------


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def charts(cell: dict) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def diagrams(notebook: dict) -> list[int]:
    """Mermaid blocks per markdown cell, in order."""
    return [
        source(cell).count("```mermaid")
        for cell in notebook["cells"]
        if cell["cell_type"] == "markdown"
    ]


def cleared(notebook: dict) -> dict:
    """The notebook as a student gets it fresh: no outputs, no execution counts."""
    copy = json.loads(json.dumps(notebook))
    for cell in code_cells(copy):
        cell["outputs"], cell["execution_count"] = [], None
    return copy


def describe(index: int, cell: dict) -> str:
    first_line = source(cell).strip().splitlines()[0] if source(cell).strip() else "(empty)"
    return f"code cell {index} (`{first_line[:70]}`)"


def problems_in_saved(notebook: dict, name: str) -> tuple[list[str], list[str]]:
    """Errors (raised exceptions, tracebacks on stderr) and warnings, one line each + text."""
    errors, notes = [], []
    for index, cell in enumerate(code_cells(notebook)):
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                trace = ANSI.sub("", "\n".join(out.get("traceback", [])))
                errors.append(
                    f"{name}, {describe(index, cell)} raised {out['ename']}: {out['evalue']}\n"
                    + "\n".join(trace.splitlines()[-15:])
                )
            elif out["output_type"] == "stream" and out["name"] == "stderr":
                text = ANSI.sub("", "".join(out["text"]))
                where = f"{name}, {describe(index, cell)} wrote to stderr:\n{text.strip()[-1500:]}"
                (errors if ERROR_ON_STDERR.search(text) else notes).append(where)
    return errors, notes


# --- driving JupyterLab -------------------------------------------------------------------------


def menu_command(page, menu: str, command: str) -> None:
    """Click a top menu (e.g. "Run"), then the item that runs ``command``."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(rf"^{menu}$")).click()
    page.locator(f".lm-Menu-item[data-command='{command}']").click()


def open_dialog_text(page) -> str:
    dialogs = page.locator(".jp-Dialog")
    return " | ".join(dialogs.all_inner_texts()) if dialogs.count() else ""


def screenshot(page, name: str) -> Path:
    """The whole notebook in one image: grow the viewport to the notebook's scroll height."""
    SCREENSHOTS.mkdir(exist_ok=True)
    scroller = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer")
    height = scroller.evaluate("s => s.scrollHeight") if scroller.count() else 0
    tall = min(max(VIEWPORT["height"], height + 200), MAX_SCREENSHOT_HEIGHT)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": tall})
    if scroller.count():
        scroller.evaluate("s => { s.scrollTop = 0; }")
    page.wait_for_timeout(500)  # let the grown layout paint
    path = SCREENSHOTS / f"{Path(name).stem}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


def save_notebook(page, path: Path) -> dict:
    """File > Save Notebook, then the notebook as JupyterLab wrote it."""
    before = path.stat().st_mtime_ns
    menu_command(page, "File", "docmanager:save")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for(timeout=UI_TIMEOUT_MS)
    saved = wait_until(
        lambda: (
            path.stat().st_mtime_ns != before
            and page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0
        ),
        UI_TIMEOUT_MS / 1000,
    )
    assert saved, f"{path.name}: File > Save Notebook did not write the file"
    return json.loads(path.read_text())


@dataclass
class BrowserRun:
    """What one Run All Cells left behind: the page's code cells, the saved notebook, a picture."""

    cells: list[dict]
    saved: dict
    screenshot: Path
    diagrams: list[dict]


def shown_prompt(run: BrowserRun, index: int) -> str:
    """The execution prompt of code cell ``index``. A check cell whose input is collapsed (the
    notebooks hide them so they do not spoil the Predict prompts) shows no prompt of its own:
    its count is read from the saved notebook, which the test checks separately."""
    cell = run.cells[index]
    if cell["prompt"].strip() or not cell.get("collapsed"):
        return cell["prompt"].strip()
    return f"[{code_cells(run.saved)[index].get('execution_count')}]:"


def read_diagrams(page, expected: int) -> list[dict]:
    """The Mermaid diagrams per markdown cell, once ``expected`` are drawn (or one failed), or
    as they are after UI_TIMEOUT_MS: mermaid is loaded and draws asynchronously."""
    if expected:
        with contextlib.suppress(Exception):  # playwright's TimeoutError: the assert says more
            page.wait_for_function(
                f"""() => {{ const cells = ({READ_DIAGRAMS_JS})() || [];
                  return cells.reduce((n, c) => n + c.drawn, 0) >= {expected}
                    || cells.some(c => c.failed.length); }}""",
                timeout=UI_TIMEOUT_MS,
                polling=250,
            )
    return page.evaluate(READ_DIAGRAMS_JS) or []


def run_all_cells(lab: LabServer, browser, committed: dict, name: str, spent: dict) -> BrowserRun:
    """Open ``name`` in a fresh browser context, Run > Run All Cells, File > Save Notebook."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    started = time.monotonic()
    try:
        # A fresh workspace per notebook: JupyterLab reopens nothing from the previous one.
        workspace = f"browser-test-{Path(name).stem}-{secrets.token_hex(4)}"
        page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}")
        lab.wait_for_one_idle_kernel(name)
        page.locator(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator"
            "[data-status='idle']"
        ).wait_for(timeout=STARTUP_TIMEOUT_S * 1000)
        spent["open"] = time.monotonic() - started
        shown = len(page.evaluate(READ_CELLS_JS))
        expected = len(code_cells(committed))
        assert shown == expected, f"{name}: the page shows {shown} of {expected} code cells"
        drawn = read_diagrams(page, sum(diagrams(committed)))

        run_started = time.monotonic()
        menu_command(page, "Run", "runmenu:run-all")
        page.wait_for_function(RUN_STARTED_JS, timeout=UI_TIMEOUT_MS)
        try:
            page.wait_for_function(RUN_FINISHED_JS, timeout=RUN_TIMEOUT_S * 1000, polling=500)
        except Exception as timeout:  # playwright's TimeoutError
            cells = page.evaluate(READ_CELLS_JS) or []
            running = [i for i, cell in enumerate(cells) if "*" in cell["prompt"]]
            where = describe(running[0], code_cells(committed)[running[0]]) if running else "?"
            pytest.fail(
                f"{name}: Run All Cells did not finish within {RUN_TIMEOUT_S} s; still running: "
                f"{where}; dialog: {open_dialog_text(page) or 'none'}; "
                f"screenshot {screenshot(page, name)}\n{timeout}"
            )
        spent["run"] = time.monotonic() - run_started
        cells = page.evaluate(READ_CELLS_JS)
        lab.kernel_processes()  # remember the kernel's pid, to check it is gone at the end
        saved = save_notebook(page, lab.root / name)
        return BrowserRun(cells, saved, screenshot(page, name), drawn)
    finally:
        context.close()
        lab.shut_down_kernels()
        spent["total"] = time.monotonic() - started


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.timeout(RUN_TIMEOUT_S + 2 * STARTUP_TIMEOUT_S)
@pytest.mark.parametrize("committed_path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(committed_path: Path, lab, browser, timings):
    name = committed_path.name
    committed = json.loads(committed_path.read_text())
    (lab.root / name).write_text(json.dumps(cleared(committed), indent=1))
    assert lab.api("GET", "/api/kernels") == [], "a kernel from an earlier notebook still runs"

    run = run_all_cells(lab, browser, committed, name, timings.setdefault(name, {}))
    shot = f"(screenshot: {run.screenshot})"

    errors, stderr_notes = problems_in_saved(run.saved, name)
    for note in stderr_notes:
        warnings.warn(f"stderr output, not a failure: {note}", UserWarning, stacklevel=1)
    assert not errors, "\n\n".join(errors) + f"\n{shot}"

    # Every (non-empty) code cell ran once, top to bottom: prompts [1]: .. [n]:.
    runnable = [i for i, cell in enumerate(code_cells(committed)) if source(cell).strip()]
    prompts = [shown_prompt(run, i) for i in runnable]
    not_run = [
        f"{describe(i, code_cells(committed)[i])} shows {prompt or 'no prompt'}"
        for i, prompt in zip(runnable, prompts, strict=True)
        if not re.fullmatch(r"\[\d+\]:", prompt)
    ]
    assert not not_run, f"{name}: cells without an execution count: {not_run} {shot}"
    assert prompts == [f"[{n}]:" for n in range(1, len(runnable) + 1)], (
        f"{name}: cells did not run once, top to bottom: {prompts} {shot}"
    )
    saved_counts = [code_cells(run.saved)[i].get("execution_count") for i in runnable]
    assert saved_counts == list(range(1, len(runnable) + 1)), (
        f"{name}: the saved notebook's execution counts {saved_counts} differ from the page's"
    )

    # Every chart of the committed notebook is a loaded <img> in the same cell.
    missing = []
    for i, cell in enumerate(code_cells(committed)):
        want, page_cell = charts(cell), run.cells[i]
        if page_cell["loaded"] != want or page_cell["images"] != want:
            missing.append(
                f"{describe(i, cell)}: {page_cell['loaded']} of {want} chart(s) shown "
                f"({page_cell['images']} <img>)"
            )
    assert not missing, f"{name}: charts differ from the committed notebook: {missing} {shot}"

    # Every Mermaid diagram is drawn, none shown as an error.
    wanted, drawn = diagrams(committed), run.diagrams
    failed = [f"markdown cell {i}: {error}" for i, c in enumerate(drawn) for error in c["failed"]]
    assert not failed, f"{name}: Mermaid diagrams that did not parse: {failed} {shot}"
    assert [c["drawn"] for c in drawn] == wanted, (
        f"{name}: diagrams drawn per markdown cell {[c['drawn'] for c in drawn]}, expected "
        f"{wanted} {shot}"
    )
