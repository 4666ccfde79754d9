"""`stepmap report RUN_ID`: where a run's time went, from its result entries.

    <runs-dir>/<run-id>/manifest.json + SUCCEEDED_n / FAILED_n / PENDING_n.json
        │ StartDate, StopDate, Status, Name (+ Worker on local and Dask runs)
        ▼
    summarize() ──► wall time, tasks, workers, busy %, median / p95 / max, stragglers
        ▼
    report.png: a timeline of tasks per worker + a histogram of task durations

Entries written by AWS have no Worker: every child execution runs on its own Lambda, so the
timeline packs them greedily into lanes (a task goes to the first lane free at its start).
Nothing here calls AWS: an AWS run is reported from result files already in the run directory.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import BinaryIO

from .cli_common import runs_location
from .errors import UsageError
from .extras import require
from .records import asdict, dataclass, field
from .results import RunStore, parse_time

STRAGGLER_FACTOR = 3.0  # a task this many times slower than the median is a straggler
COLOURS = {"SUCCEEDED": "#3b75af", "FAILED": "#d62728", "straggler": "#f0a030"}


@dataclass(frozen=True)
class Task:
    name: str
    status: str
    start: float  # seconds since the run's first task started
    stop: float
    lane: str

    @property
    def seconds(self) -> float:
        return self.stop - self.start


@dataclass
class Summary:
    run_id: str
    tasks: int
    failed: int
    pending: int
    workers: int
    wall_seconds: float
    busy_percent: float
    median_seconds: float
    p95_seconds: float
    max_seconds: float
    straggler_threshold_seconds: float
    stragglers: list[dict] = field(default_factory=list)
    packed_lanes: bool = False  # True: no Worker in the entries (AWS); lanes were packed


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * fraction
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def _when(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)  # epoch ms or s
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def tasks_from_entries(entries: list[dict]) -> tuple[list[Task], int, bool]:
    """Timed tasks (seconds from the first start), how many entries had no times (PENDING),
    and whether lanes had to be packed because the entries name no worker."""
    timed, untimed = [], 0
    for entry in entries:
        start, stop = _when(entry.get("StartDate")), _when(entry.get("StopDate"))
        if start is None or stop is None:
            untimed += 1
            continue
        timed.append((start, max(start, stop), entry))
    if not timed:
        return [], untimed, False
    origin = min(start for start, _, _ in timed)
    timed.sort(key=lambda t: (t[0], t[1]))
    packed = not all(isinstance(e.get("Worker"), str) for _, _, e in timed)
    lanes_free: list[float] = []  # packing: when each lane's last task stopped
    tasks = []
    for start, stop, entry in timed:
        if packed:
            lane = next((i for i, free in enumerate(lanes_free) if free <= start), None)
            if lane is None:
                lane = len(lanes_free)
                lanes_free.append(stop)
            lanes_free[lane] = stop
            lane_name = f"lane {lane + 1}"
        else:
            lane_name = entry["Worker"]
        tasks.append(Task(str(entry.get("Name", "?")), str(entry.get("Status", "?")),
                          start - origin, stop - origin, lane_name))
    return tasks, untimed, packed


def summarize(run_id: str, entries: list[dict]) -> tuple[Summary, list[Task]]:
    tasks, pending, packed = tasks_from_entries(entries)
    durations = sorted(t.seconds for t in tasks)
    wall = max((t.stop for t in tasks), default=0.0)
    workers = len({t.lane for t in tasks})
    median = statistics.median(durations) if durations else 0.0
    threshold = STRAGGLER_FACTOR * median
    slow = sorted((t for t in tasks if median > 0 and t.seconds > threshold),
                  key=lambda t: -t.seconds)
    busy = 100 * sum(durations) / (wall * workers) if wall > 0 and workers else 0.0
    summary = Summary(run_id, len(tasks), sum(t.status == "FAILED" for t in tasks), pending,
                      workers, wall, busy, median, percentile(durations, 0.95),
                      durations[-1] if durations else 0.0, threshold,
                      [{"name": t.name, "seconds": t.seconds, "lane": t.lane,
                        "status": t.status} for t in slow], packed)
    return summary, tasks


# ------------------------------------------------------------------ reading a run

def load_entries(runs_location: str, run_id: str) -> tuple[dict, list[dict], RunStore]:
    store = RunStore.open(runs_location, run_id)  # refuses ids that are not path-safe
    record = store.read_record() if store.has_record() else None
    files = store.result_files()
    if record is None and not files:
        raise UsageError(f"no run {run_id} in {store.storage.describe()}")
    record = record or {}
    if store.has_manifest():  # the manifest is authoritative when the run finished
        manifest = store.read_manifest()
        keys = [k for status in ("SUCCEEDED", "FAILED", "PENDING")
                for k in RunStore.manifest_keys(manifest, status)]
    else:  # interrupted before its manifest: every complete result file written so far
        keys = [f.key for f in files]
    if not keys:
        if record.get("engine") == "aws" or record.get("execution_arn"):
            raise UsageError(
                f"run {run_id} ran on AWS ({record.get('execution_arn', 'no execution ARN')}) "
                f"and none of its result files are in {store.describe()}: download them into "
                "that directory first (stepmap report never calls AWS)")
        raise UsageError(f"run {run_id} has no result entries in {store.describe()} yet")
    return record, list(store.iter_entries(keys)), store


def default_png(store: RunStore, run_id: str) -> Path:
    root = getattr(store.storage, "root", None)
    if root is not None:  # a local runs directory: next to the run's results
        return Path(root) / store.prefix / "report.png"
    return Path(f"{run_id}-report.png")


# ------------------------------------------------------------------ the picture

def _unit(seconds: float) -> tuple[float, str]:
    return (1000.0, "ms") if seconds < 2 else (1.0, "s") if seconds < 300 else (1 / 60, "min")


def draw(path: Path | BinaryIO, summary: Summary, tasks: list[Task], title: str) -> None:
    """The report's figure, as a PNG file or into a binary stream (the dashboard serves it)."""
    fig = timeline_figure(summary, tasks, title)
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")


def timeline_figure(summary: Summary, tasks: list[Task], title: str):
    """The picture as a matplotlib Figure, built without pyplot (so no GUI backend and no
    global figure list: it is saved to a file or a stream, or shown inline by a notebook)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    lanes = sorted({t.lane for t in tasks}, key=_lane_key)
    row = {lane: i for i, lane in enumerate(lanes)}
    height = min(9.0, 2.6 + 0.22 * len(lanes))
    fig = Figure(figsize=(11, height + 3.2))
    timeline, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [height, 3.2]})
    scale, unit = _unit(max(summary.wall_seconds, 1e-9))
    slow = {(s["name"], s["lane"]) for s in summary.stragglers}
    for kind in ("SUCCEEDED", "straggler", "FAILED"):
        chosen = [t for t in tasks if _kind(t, slow) == kind]
        for lane in lanes:
            bars = [(t.start * scale, max(t.seconds * scale, 1e-9)) for t in chosen
                    if t.lane == lane]
            if bars:
                timeline.broken_barh(bars, (row[lane] - 0.4, 0.8), facecolors=COLOURS[kind],
                                     edgecolor="white" if len(tasks) < 400 else "none",
                                     linewidth=0.3)
    timeline.set_ylim(-0.6, len(lanes) - 0.4)
    timeline.set_xlim(0, max(summary.wall_seconds * scale, 1e-9) * 1.01)
    if len(lanes) <= 40:
        timeline.set_yticks(range(len(lanes)), lanes, fontsize=8)
    else:
        timeline.set_yticks([])
    timeline.invert_yaxis()
    timeline.set_xlabel(f"time since the first task started ({unit})")
    timeline.set_ylabel("Lambda lanes (packed)" if summary.packed_lanes else "worker")
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    timeline.legend(handles=[Patch(color=COLOURS["SUCCEEDED"], label="succeeded"),
                             Patch(color=COLOURS["straggler"],
                                   label=f"straggler (> {STRAGGLER_FACTOR:g}× median)"),
                             Patch(color=COLOURS["FAILED"], label="failed")],
                    loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8,
                    frameon=False)
    hscale, hunit = _unit(summary.max_seconds)
    ok = [t.seconds * hscale for t in tasks if t.status != "FAILED"]
    bad = [t.seconds * hscale for t in tasks if t.status == "FAILED"]
    bins = max(10, min(60, int(math.sqrt(len(tasks))) * 2))
    hist.hist([ok, bad], bins=bins, stacked=True, color=[COLOURS["SUCCEEDED"], COLOURS["FAILED"]],
              label=["succeeded", "failed"])
    for value, label, style in ((summary.median_seconds, "median", "-"),
                                (summary.p95_seconds, "p95", "--"),
                                (summary.straggler_threshold_seconds, "straggler threshold", ":")):
        if 0 < value <= summary.max_seconds * 1.05:
            hist.axvline(value * hscale, color="black", linestyle=style, linewidth=1, label=label)
    hist.set_xlabel(f"task duration ({hunit})")
    hist.set_ylabel("tasks")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _kind(task: Task, slow: set) -> str:
    if task.status == "FAILED":
        return "FAILED"
    return "straggler" if (task.name, task.lane) in slow else "SUCCEEDED"


def _lane_key(lane: str):
    head, _, tail = lane.rpartition(" ") if lane.startswith("lane ") else lane.rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (lane, 0)


# ------------------------------------------------------------------ command line

def register(sub, *, engine_options, output_options) -> None:
    parser = sub.add_parser("report", allow_abbrev=False,
                            help="timeline, durations and stragglers of a past run (PNG)")
    parser.add_argument("run_id")
    parser.add_argument("--results", "--runs", dest="results", default=None, metavar="DIR",
                        help="runs directory or s3:// (default ./stepmap-runs or "
                             "$STEPMAP_RESULTS)")
    parser.add_argument("--out", metavar="FILE.png",
                        help="where to write the PNG (default <run-dir>/report.png)")
    parser.add_argument("--json", action="store_true", help="the summary as one JSON object")
    parser.set_defaults(func=cmd_report)


def cmd_report(args, extra: list[str]) -> int:
    require("matplotlib", "report", "stepmap report")
    record, entries, store = load_entries(runs_location(args.results), args.run_id)
    summary, tasks = summarize(args.run_id, entries)
    if not tasks:
        raise UsageError(f"run {args.run_id} has no finished tasks yet ({summary.pending:,} "
                         "pending): nothing to report")
    out = Path(args.out) if args.out else default_png(store, args.run_id)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {str(out)[:80]!r}")
    try:
        draw(out, summary, tasks, title_for(summary, record))
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    if args.json:
        sys.stdout.write(json.dumps({**asdict(summary), "png": str(out),
                                     "engine": record.get("engine")}) + "\n")
        return 0
    print(format_summary(summary, record, out))
    return 0


def title_for(summary: Summary, record: dict) -> str:
    """The figure's title: which run, and the headline numbers."""
    return (f"run {summary.run_id} ({record.get('workload', '?')} on "
            f"{record.get('engine', '?')}): {summary.tasks:,} tasks on {summary.workers:,} "
            f"{'lane' if summary.packed_lanes else 'worker'}{'s' * (summary.workers != 1)}, "
            f"wall {_secs(summary.wall_seconds)}, busy {summary.busy_percent:.1f} %")


def format_summary(s: Summary, record: dict, png) -> str:
    who = ("Lambda lanes (packed)" if s.packed_lanes else "workers") if s.workers != 1 \
        else ("Lambda lane" if s.packed_lanes else "worker")
    lines = [
        f"run {s.run_id} ({record.get('workload', '?')} on {record.get('engine', '?')}): "
        f"{s.tasks:,} tasks on {s.workers:,} {who}, {s.failed:,} failed"
        + (f", {s.pending:,} pending (not run)" if s.pending else ""),
        f"  wall time    {_secs(s.wall_seconds)} (first task start to last task stop)",
        f"  busy         {s.busy_percent:.1f} % (task time / (wall time × "
        f"{'lanes' if s.packed_lanes else 'workers'}))",
        f"  task time    median {_secs(s.median_seconds)} · p95 {_secs(s.p95_seconds)} · "
        f"max {_secs(s.max_seconds)}",
    ]
    if s.stragglers:
        names = ", ".join(f"{x['name']} ({_secs(x['seconds'])})" for x in s.stragglers[:10])
        more = f", and {len(s.stragglers) - 10:,} more" if len(s.stragglers) > 10 else ""
        lines.append(f"  stragglers   {len(s.stragglers):,} over {STRAGGLER_FACTOR:g}× the "
                     f"median ({_secs(s.straggler_threshold_seconds)}): {names}{more}")
    else:
        lines.append(f"  stragglers   none over {STRAGGLER_FACTOR:g}× the median "
                     f"({_secs(s.straggler_threshold_seconds)})")
    lines.append(f"  report       {png}")
    return "\n".join(lines)


def _secs(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min"
