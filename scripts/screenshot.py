"""Screenshot of TensorBoard's HParams table for a log folder, taken in headless Chromium.

    python scripts/screenshot.py --logdir logs                          # writes logs/hparams.png
    python scripts/screenshot.py --logdir logs --out docs/hparams.png   # the documentation's picture

Starts TensorBoard on a free port, waits until it has loaded every run of the folder, opens the
HParams table in headless Chromium with the hparam columns TensorBoard shows at first (or those
given), sorted by final loss, the Trial ID column widened to its longest name, writes the PNG and
stops both. Chromium is driven over the DevTools protocol on a pipe, so nothing but the standard
library is needed. Prints how many sessions and columns the view holds, which columns it shows,
and how many sessions have every metric (the ones parallel coordinates draw).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The TensorBoard server the tests start, on 127.0.0.1 only
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tensorboard_server import TensorBoardServer  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]

# The HParams dashboard is a Polymer element tree inside shadow roots; find its query pane.
FIND_PANE = """
function findPane() {
  const stack = [document];
  while (stack.length) {
    const node = stack.pop();
    if (node.tagName === 'TF-HPARAMS-QUERY-PANE') return node;
    if (node.shadowRoot) stack.push(node.shadowRoot);
    for (const child of node.children || []) stack.push(child);
  }
  return null;
}
"""
PANE_READY = (
    FIND_PANE + "(() => { const p = findPane(); return !!(p && p._hparams && p._hparams.length); })()"
)
# Show the wanted hparam columns only (null: TensorBoard's own choice) and sort by the first metric
# (final loss), ascending.
SHOW_COLUMNS = (
    FIND_PANE
    + """
((wanted) => {
  const pane = findPane();
  if (wanted) {
    pane._hparams.forEach((h, i) => pane.set('_hparams.' + i + '.displayed', wanted.includes(h.info.name)));
  }
  pane.set('_sortByIndex', pane._hparams.length);
  pane.set('_sortDirection', 0);
  if (pane._queryServer) pane._queryServer();
  return pane._hparams.filter(h => h.displayed).map(h => h.info.name);
})(%s)
"""
)
TABLE_TEXT = (
    FIND_PANE.replace("TF-HPARAMS-QUERY-PANE", "VAADIN-GRID")
    + "(() => { const g = findPane(); return g ? g.textContent : ''; })()"
)
# Widen the Trial ID column (the table's first, 10em and resizable) as a reader would by dragging it.
WIDEN_TRIAL_ID = (
    FIND_PANE.replace("TF-HPARAMS-QUERY-PANE", "VAADIN-GRID")
    + """
((width) => {
  const grid = findPane();
  const column = grid && grid.querySelector('vaadin-grid-column');
  if (column) { column.width = width; }
  return !!column;
})(%s)
"""
)


# --- TensorBoard ------------------------------------------------------------------------------


def run_folders(logdir: Path) -> set[str]:
    """The runs TensorBoard will list: every folder holding an event file, relative to logdir."""
    return {str(p.parent.relative_to(logdir)) for p in logdir.rglob("events.out.tfevents.*")}


def stop(process: subprocess.Popen) -> None:
    """Stop a process and the children it started in its process group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- Chromium ---------------------------------------------------------------------------------


def find_browser(name: str | None) -> str:
    for candidate in [name] if name else BROWSERS:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    sys.exit("error: no Chromium found; install it (Debian: apt-get install -y chromium) or pass --browser")


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol on fds 3 and 4."""

    def __init__(self, executable: str, profile: str, log: Path):
        to_browser, self._commands = os.pipe()
        self._events, from_browser = os.pipe()

        def connect_pipes() -> None:  # in the child: the protocol's fixed descriptors
            os.dup2(fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10), 3)
            os.dup2(fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10), 4)

        with open(log, "wb") as errors:
            self.process = subprocess.Popen(
                [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                close_fds=False,
                preexec_fn=connect_pipes,
                start_new_session=True,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._last_id = 0
        self.session = ""
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._events, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll a JavaScript expression until it is true (or, for text, the same twice); None on timeout."""
        deadline, previous = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value is True or (isinstance(value, str) and value and value == previous):
                return value
            previous = value
            time.sleep(0.5)
        return None

    def close(self) -> None:
        for fd in (self._commands, self._events):
            os.close(fd)
        stop(self.process)


def screenshot(
    browser: Chromium,
    url: str,
    out: Path,
    width: int,
    height: int,
    columns: list[str] | None,
    trial_id_width: str,
    timeout: float,
) -> list[str]:
    """Open the HParams table, show the columns, write the PNG; returns the hparam columns shown."""
    browser.call(
        "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
    )
    browser.call("Page.navigate", url=url)
    shown: list[str] = []
    if browser.wait_for(PANE_READY, timeout):
        shown = browser.evaluate(SHOW_COLUMNS % json.dumps(columns))
    else:
        print(
            "warning: the HParams table did not appear; the screenshot shows the page as it is",
            file=sys.stderr,
        )
    browser.wait_for(TABLE_TEXT, timeout)
    browser.evaluate(WIDEN_TRIAL_ID % json.dumps(trial_id_width))
    browser.wait_for(TABLE_TEXT, timeout)
    image = browser.call("Page.captureScreenshot", format="png")["data"]
    out.write_bytes(base64.b64decode(image))
    return shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs", help="log folder to show (default: logs)")
    parser.add_argument("--out", help="PNG to write (default: hparams.png in the log folder)")
    parser.add_argument(
        "--columns",
        help="hparam columns to show, comma-separated (default: those TensorBoard shows at first)",
    )
    parser.add_argument("--width", type=int, default=2560, help="page width in pixels (default: 2560)")
    parser.add_argument("--height", type=int, default=1280, help="page height in pixels (default: 1280)")
    parser.add_argument("--browser", help="Chromium executable (default: the first found on PATH)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each page state")
    args = parser.parse_args()

    logdir = Path(args.logdir)
    out = Path(args.out) if args.out else logdir / "hparams.png"
    if not run_folders(logdir):
        sys.exit(f"error: {logdir}: no event files; run a sweep into it first")
    executable = find_browser(args.browser)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="screenshot-") as scratch,
        TensorBoardServer(logdir, Path(scratch) / "tensorboard.log") as server,
    ):
        try:
            groups = server.wait_loaded(run_folders(logdir), args.timeout)
        except RuntimeError as exc:
            sys.exit(f"error: {exc}")
        experiment = server.experiment()
        hparams = [info["name"] for info in experiment.get("hparamInfos", [])]
        columns = [c for c in args.columns.split(",") if c in hparams] if args.columns else None
        sessions = server.session_groups()["sessionGroups"]
        metric_count = len(experiment.get("metricInfos", []))
        complete = sum(len(g["sessions"][0].get("metricValues", [])) == metric_count for g in sessions)
        longest = max((len(g["name"]) for g in sessions), default=10)
        try:
            browser = Chromium(executable, f"{scratch}/profile", Path(scratch) / "chromium.log")
        except (OSError, RuntimeError) as exc:
            log = (Path(scratch) / "chromium.log").read_text(errors="replace")[-2000:]
            sys.exit(f"error: Chromium could not start ({exc}):\n{log}")
        try:
            shown = screenshot(
                browser,
                server.url("/#hparams"),
                out,
                args.width,
                args.height,
                columns,
                f"{longest * 0.5 + 2:.0f}em",
                args.timeout,
            )
        finally:
            browser.close()
    metrics = len(experiment.get("metricInfos", []))
    print(
        f"{out}: HParams view of {logdir}: {groups['totalSize']} sessions, {len(hparams) + metrics} columns "
        f"({len(hparams)} hparams, {metrics} metrics); shown: {', '.join(shown) or 'none'}, "
        f"sorted by final loss; {complete} of {len(sessions)} sessions have every metric"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
