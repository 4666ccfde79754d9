"""`stepmap estimate`: the pricing arithmetic on known plans, calibration, and the CLI."""

import json
import re
import time

import pytest

from stepmap import estimate as est
from stepmap.estimate import Plan, billed, cpu_share, makespan, price
from stepmap.job import Start, Workload, event_items

P = est.PRICES
GB_S = P["lambda_gb_second"]["arm64"]


def plan(tasks, **kw):
    return Plan(items=kw.pop("items", sum(n for _, n in tasks)), batch_size=kw.pop("batch_size", 1),
                memory_mb=kw.pop("memory_mb", 1769), tasks=tuple(tasks), **kw)


# ------------------------------------------------------------------ counts

def test_1024_items_unbatched_is_1024_children():
    cost = price(plan([(0.1, 1024)]))
    assert cost.children == 1024
    assert cost.lambda_invocations == 1024 + 2  # + start + reduce
    assert cost.state_transitions == 4 + 2 * 1024  # parent states + (start + task) per child


def test_batches_of_64_are_16_children():
    cost = price(plan([(6.4, 16)], items=1024, batch_size=64))
    assert cost.children == 16 and cost.lambda_invocations == 18
    assert cost.state_transitions == 4 + 2 * 16


def test_s3_requests_small_and_with_the_item_list_in_s3():
    small = price(plan([(1.0, 8)]))
    # ResultWriter: one results file + the manifest; reduce GETs them both
    assert (small.s3_puts, small.s3_gets, small.items_in_s3) == (2, 2, False)
    big = price(plan([(1.0, 8)], start_output_bytes=300 * 1024, offloaded_outputs=3))
    # + item list PUT (start) and GET (ItemReader); + 3 offloaded outputs PUT and GET
    assert (big.s3_puts, big.s3_gets, big.items_in_s3) == (2 + 1 + 3, 2 + 1 + 3, True)
    huge = price(plan([(1.0, 8)], result_bytes=12 * 1024**3))
    assert (huge.s3_puts, huge.s3_gets) == (3 + 1, 1 + 3)  # three 5 GiB result files


# ------------------------------------------------------------------ GB-seconds and dollars

def test_gb_seconds_and_dollars_of_a_known_plan():
    p = plan([(1.0, 1024)], memory_mb=1024, max_concurrency=1000)
    cost = price(p)
    init = est.INIT_SECONDS
    compute = 1024 * billed(1769 / 1024) + 1000 * init  # 1 s of CPU at 1024/1769 of a vCPU
    start = billed(0) + init  # 1024 MB = 1 GB
    reduce = billed(2 * est.S3_REQUEST_SECONDS) + init  # manifest + one results file
    assert cost.gb_seconds == pytest.approx(compute + start + reduce)
    lambda_usd = cost.gb_seconds * GB_S + 1026 * 0.20 / 1e6
    assert cost.lambda_usd == pytest.approx(lambda_usd)
    assert cost.sfn_usd == pytest.approx(2052 * 0.025 / 1000)
    assert cost.s3_usd == pytest.approx(2 * 0.005 / 1000 + 2 * 0.0004 / 1000)
    assert cost.total_usd == pytest.approx(lambda_usd + cost.sfn_usd + cost.s3_usd)
    x86 = price(plan([(1.0, 1024)], memory_mb=1024, arch="x86_64"))
    assert x86.lambda_usd - 1026 * 0.2e-6 == pytest.approx(
        cost.gb_seconds * P["lambda_gb_second"]["x86_64"])


def test_prices_are_one_dated_table():
    assert P["date"] and P["region"] == "us-east-1"
    assert P["lambda_gb_second"] == {"arm64": 0.0000133334, "x86_64": 0.0000166667}
    assert (P["lambda_per_million_requests"], P["sfn_per_1000_transitions"],
            P["s3_put_per_1000"], P["s3_get_per_1000"]) == (0.20, 0.025, 0.005, 0.0004)


def test_billing_rounds_up_to_the_millisecond():
    assert billed(0.0011) == pytest.approx(0.002)
    assert billed(0.002) == pytest.approx(0.002)
    assert billed(0) == 0


# ------------------------------------------------------------------ CPU share

def test_half_the_memory_takes_twice_as_long_below_a_full_vcpu():
    assert cpu_share(1769) == 1.0 and cpu_share(10240) == 1.0  # no speed-up past one vCPU
    assert cpu_share(885) == pytest.approx(0.5, rel=1e-3)
    full = price(plan([(2.0, 10)], memory_mb=1769))
    half = price(plan([(2.0, 10)], memory_mb=885))
    assert half.longest_task_seconds == pytest.approx(2 * full.longest_task_seconds, rel=1e-3)
    # GB-seconds of CPU-bound work do not change below one vCPU: half the memory, twice as long
    long_full = price(plan([(1000.0, 10)], memory_mb=1769))
    long_half = price(plan([(1000.0, 10)], memory_mb=885))
    assert long_half.gb_seconds == pytest.approx(long_full.gb_seconds, rel=1e-3)
    more = price(plan([(2.0, 10)], memory_mb=3538))
    assert more.longest_task_seconds == pytest.approx(full.longest_task_seconds)
    assert more.lambda_usd > full.lambda_usd  # memory past 1,769 MB is paid for, not used


# ------------------------------------------------------------------ wall time

def test_makespan_dispatches_in_order_to_the_first_free_lane():
    assert makespan([(1.0, 3)], 2) == 2.0
    assert makespan([(1.0, 1), (5.0, 1), (1.0, 1)], 2) == 5.0
    assert makespan([(1.0, 4)], 1000) == 1.0  # more lanes than tasks
    assert makespan([(1.0, 2)], 1, overhead=0.5, first=0.3) == pytest.approx(0.3 + 2 * 1.5)
    assert makespan([], 10) == 0.0


def test_wall_time_uses_the_concurrency():
    wide = price(plan([(10.0, 100)], max_concurrency=1000))
    narrow = price(plan([(10.0, 100)], max_concurrency=10))
    assert narrow.wall_seconds - wide.wall_seconds == pytest.approx(9 * (10 + 0.1), rel=1e-6)
    assert price(plan([(1000.0, 2)])).tasks_over_timeout == 2


# ------------------------------------------------------------------ calibration

class Cubic(Workload):
    """cost(item) = (index + 1)^3 µs on a fake clock: an exact power law to extrapolate."""
    name = "cubic"

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def start(self, event):
        return Start(params={}, items=range(event["n"]), count=event["n"])

    def compute(self, event):
        for item in event_items(event):
            self.now += 1e-6 * (item["index"] + 1) ** 3
        return "1"

    def reduce(self, outputs):
        return str(sum(int(o) for o in outputs))


def test_calibration_extrapolates_a_power_law_past_its_budget():
    work = Cubic()
    cal = est.calibrate(work, work.start({"n": 1024}), 1, budget=1.0, clock=work.clock)
    measured = [s for s in cal.samples if s.seconds is not None]
    skipped = [s for s in cal.samples if s.seconds is None]
    assert measured[0].first == 0 and skipped and skipped[-1].first == 1023
    assert max(s.first for s in measured) < min(s.first for s in skipped)
    assert cal.exponent == pytest.approx(3.0, abs=0.01)
    assert len(cal.tasks) == 1024 and all(n == 1 for _, n in cal.tasks)
    assert cal.tasks[-1][0] == pytest.approx(1024**3 * 1e-6, rel=0.02)  # ≈ 1074 s, not run
    assert sum(s.seconds for s in measured) <= 1.0 + 1e-9


def test_a_runaway_sample_is_stopped_at_the_budget():
    class Sleepy(Cubic):
        def compute(self, event):
            time.sleep(30)

    work = Sleepy()
    began = time.monotonic()
    cal = est.calibrate(work, work.start({"n": 10}), 1, budget=0.3)
    assert time.monotonic() - began < 3
    assert cal.samples[0].at_least and cal.samples[0].seconds >= 0.25
    assert all(d >= 0.25 for d, _ in cal.tasks)  # a lower bound, not zero


def test_rebinning_prices_big_batches_as_the_small_ones_they_cover():
    pilot = est.Calibration(10, ((1.0, 2), (3.0, 2)), [], 0.0, 0.0, [(5, 2), (7, 2)])
    out = est.rebin(pilot, 20, 40)
    assert out.tasks == ((2.0, 1), (6.0, 1)) and out.output_bytes == [(5, 1), (7, 1)]
    assert out.priced_from == 10


# ------------------------------------------------------------------ the command

def test_cli_table_shows_original_beside_recommended(cli):
    code, out, err = cli("estimate", "s3keys", "--size", "512", "--calibration-seconds", "0.4")
    assert code == 0, err
    header = next(line for line in out.splitlines() if "original" in line)
    assert header.split() == ["original", "recommended"]
    rows = {cells[0]: cells[1:] for cells in
            (re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[3:18])}
    assert rows["method"][0] == "multinomial" and rows["method"][1] in ("jump", "closed")
    assert rows["child executions"][0] == "512" and rows["state transitions"][0] == "1,028"
    assert rows["Lambda memory"] == ["4,096 MB", "1,769 MB"]
    for label in ("Lambda invocations", "state transitions", "cost: total (est.)",
                  "wall time (est.)", "Lambda GB-seconds (est.)", "S3 requests PUT / GET"):
        assert label in rows
    assert "all figures are estimates" in out and "original: timed" in out
    assert P["date"] in out


def test_cli_json_has_the_same_numbers_and_original_costs_more(cli):
    code, out, err = cli("estimate", "s3keys", "--size", "1024", "--json",
                         "--calibration-seconds", "0.5")
    assert code == 0, err
    data = json.loads(out)
    original, recommended = data["configurations"]["original"], data["configurations"]["recommended"]
    assert data["prices"]["date"] == P["date"]
    assert original["method"] == "multinomial" and original["memory_mb"] == 4096
    assert original["children"] == 1024 and original["lambda_invocations"] == 1026
    assert original["state_transitions"] == 2052
    assert recommended["memory_mb"] == 1769
    assert original["total_usd"] > 10 * recommended["total_usd"]
    assert original["gb_seconds"] > recommended["gb_seconds"]
    for key in ("gb_seconds", "s3_puts", "s3_gets", "lambda_usd", "sfn_usd", "s3_usd",
                "wall_seconds", "calibration"):
        assert key in recommended
    cal = original["calibration"]
    assert cal["measured"] and cal["extrapolated"]  # n=1023 is far too slow to time


def test_cli_batch_size_memory_and_concurrency(cli):
    code, out, err = cli("estimate", "s3keys", "--size", "1024", "--method", "jump",
                         "--batch-size", "64", "--memory", "885", "--max-concurrency", "8",
                         "--json", "--calibration-seconds", "0.3")
    assert code == 0, err
    rec = json.loads(out)["configurations"]["recommended"]
    assert (rec["batch_size"], rec["children"], rec["lambda_invocations"]) == (64, 16, 18)
    assert (rec["memory_mb"], rec["max_concurrency"], rec["method"]) == (885, 8, "jump")


def test_calibration_runs_in_a_child_without_gmpy2():
    import subprocess
    import sys
    probe = est.CHILD_CODE.split("\n")[0] + "\nfrom stepmap.workloads import s3keys_math as m; print(m.BACKEND)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
    assert out.strip() == "python"  # as in the Lambda package, which bundles no gmpy2


def test_a_workload_that_kills_its_process_does_not_take_the_command_down(cli):
    code, out, err = cli("estimate", "chaos", "--items", "4", "--faults", '{"kill": [0]}')
    assert code == 1 and out == "" and "killed by signal 9" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "unknown workload"),
    (["s3keys", "--memory", "64"], "--memory"),
    (["s3keys", "--batch-size", "0"], "--batch-size"),
    (["s3keys", "--max-concurrency", "0"], "--max-concurrency"),
    (["s3keys", "--size", "0"], "size"),
    (["s3keys", "--bogus", "1"], "--bogus"),
])
def test_bad_input_exits_2_with_one_line(cli, argv, message):
    code, out, err = cli("estimate", *argv)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_a_long_range_is_priced_as_the_sub_ranges_aws_lists(cli):
    """A range over 1,000 items reaches AWS as sub-ranges (aws/subranges.py): a child gets
    whole ones, so a batch of 64 items is one sub-range of 100, and 1,000 children, not
    1,563; the original job (no sub-ranges) still has one child per item."""
    code, out, err = cli("estimate", "s3keys", "--size", "100000", "--method", "jump",
                         "--batch-size", "64", "--json", "--calibration-seconds", "0.5")
    assert code == 0, err
    configurations = json.loads(out)["configurations"]
    original, recommended = configurations["original"], configurations["recommended"]
    assert (original["children"], original["subrange_length"]) == (100_000, None)
    assert (recommended["batch_size"], recommended["children"]) == (100, 1000)
    assert recommended["subrange_length"] == 100
    assert recommended["batch_input_bytes"] < 400  # one sub-range item, not 100 items
    code, out, err = cli("estimate", "s3keys", "--size", "100000", "--method", "jump",
                         "--calibration-seconds", "0.5")
    assert code == 0, err
    chosen = re.search(r"sub-ranges of 100 .*?--batch-size ([0-9,]+)", " ".join(out.split()))
    assert chosen, out
    batch = int(next(line for line in out.splitlines()
                     if line.startswith("items per child execution")).split()[-1].replace(",", ""))
    assert batch % 100 == 0 and int(chosen[1].replace(",", "")) == batch // 100
