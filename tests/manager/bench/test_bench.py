"""``tether bench``: each benchmark runs to the end and reports the figures it promises.

These start real managers (and one real delegate) on loopback with timings scaled down,
and keep the runs small: they check the benchmarks, not the speed.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from manager.bench import (
    BenchOptions,
    LogReadOptions,
    MaskerOptions,
    main_bench,
    run_bench,
    run_log_read_bench,
    run_masker_bench,
)
from manager.bench.assigner import run_assigner_bench
from manager.bench.cli import median_of
from manager.bench.options import AssignerOptions

SCALE = 0.05
PERCENTILES = {"p50", "p95", "p99"}


def _assert_task_figures(out: dict[str, object], tasks: int) -> None:
    assert out["tasks"] == tasks
    assert out["completed"] == tasks
    assert isinstance(out["tasks_per_s"], float)
    assert out["tasks_per_s"] > 0
    for key in ("started_latency_ms", "result_latency_ms"):
        figures = out[key]
        assert isinstance(figures, dict)
        assert set(figures) == PERCENTILES
        assert 0 <= figures["p50"] <= figures["p95"] <= figures["p99"]
    assert isinstance(out["manager_rss_mib"], float)
    assert out["manager_rss_mib"] > 0
    assert "manager_cpu_s" in out
    assert out["replicas"] == 1


async def test_simulated_stream_bench_completes_every_task() -> None:
    out = await run_bench(BenchOptions(delegates=2, tasks=50, concurrency=5, time_scale=SCALE))
    _assert_task_figures(out, 50)
    assert out["mode"] == "stream"
    assert out["delegates_connected"] == 2
    assert out["database"] == "sqlite"
    # The real delegate's path while its stream is up: results as stream requests.
    assert out["results_over"] == {"stream": 50, "https": 0}
    assert "results_refused" not in out
    json.dumps(out)  # what the command prints


async def test_simulated_polling_bench_completes_every_task() -> None:
    out = await run_bench(
        BenchOptions(delegates=2, tasks=30, concurrency=5, mode="poll", time_scale=SCALE)
    )
    _assert_task_figures(out, 30)
    assert out["mode"] == "poll"
    assert out["delegates_connected"] == 2
    assert out["results_over"] == {"stream": 0, "https": 30}


async def test_rate_paces_submissions() -> None:
    out = await run_bench(
        BenchOptions(delegates=1, tasks=20, concurrency=5, rate=100.0, time_scale=SCALE)
    )
    _assert_task_figures(out, 20)
    assert out["rate"] == 100.0
    # The 20th task is not sent before 19/100 s have passed.
    assert out["elapsed_s"] >= 0.19


async def test_idle_bench_holds_the_delegates() -> None:
    out = await run_bench(BenchOptions(delegates=3, idle=0.3, time_scale=SCALE))
    assert out["bench"] == "idle"
    assert out["delegates_connected"] == 3
    assert out["idle_s"] == 0.3
    assert "tasks_per_s" not in out


async def test_real_delegate_bench_runs_shell_tasks() -> None:
    out = await run_bench(
        BenchOptions(real_delegates=1, tasks=10, concurrency=5, capacity=4, time_scale=SCALE)
    )
    _assert_task_figures(out, 10)
    assert out["bench"] == "real"
    assert out["succeeded"] == 10
    assert out["delegate_modes"] == ["stream"]
    assert out["delegates_connected"] == 1
    # Every result came on the delegate's stream: ten are far under its in-flight bound.
    assert out["results_over"] == {"stream": 10, "https": 0}
    # The delegate's own CPU per task, apart from its tasks' processes (which it reaped).
    own, tasks = out["delegate_own_cpu_ms_per_task"], out["task_processes_cpu_ms_per_task"]
    assert isinstance(own, float)
    assert isinstance(tasks, float)
    assert own > 0
    assert tasks >= 0  # the kernel counts in 10 ms ticks: ten `true` may show none
    assert out["delegate_cpu_s"] == pytest.approx((own + tasks) * 10 / 1000, abs=0.02)


async def test_sequential_real_bench_reports_each_tasks_wait_on_the_clients_clock() -> None:
    out = await run_bench(
        BenchOptions(real_delegates=1, tasks=5, capacity=4, time_scale=SCALE, sequential=True)
    )
    _assert_task_figures(out, 5)
    assert out["succeeded"] == 5
    seen = out["sequential_result_ms"]
    assert isinstance(seen, dict)
    assert 0 < seen["p50"] <= seen["p95"] <= seen["p99"]


def test_assigner_bench_finishes_every_task_saturated_and_not() -> None:
    out = run_assigner_bench(AssignerOptions(delegates=20, tasks=300, capacity=2, classes=4))
    assert out["bench"] == "assigner"
    # Saturated: every task taken off the running ones was finished and its slot refilled.
    assert out["saturated_completed"] == 300
    # Unsaturated: each new task was placed at once (and some refills besides, never fewer).
    assert out["unsaturated_completed"] >= 300
    for key in ("saturated_us_per_task", "unsaturated_us_per_task"):
        assert isinstance(out[key], float)
        assert out[key] > 0


def test_assigner_bench_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_bench(["--assigner", "--delegates", "3", "--tasks", "50", "--capacity", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["bench"], out["delegates"], out["tasks"]) == ("assigner", 3, 50)


def test_masker_bench_masks_every_secret_in_the_text() -> None:
    out = run_masker_bench(MaskerOptions(secrets=50, megabytes=1.0, chunk=4096))
    assert out["secrets_in_text"] > 0
    assert out["shapes_in_text"] > 0
    assert out["masks_written"] == out["secrets_in_text"] + out["shapes_in_text"]
    assert isinstance(out["mb_per_s"], float)
    assert out["mb_per_s"] > 0
    assert out["patterns"] > 50


async def test_log_read_bench_reads_the_whole_log_with_every_reader() -> None:
    # 300 lines of 16 KiB: over one page's byte bound, so each reader reads several pages.
    out = await run_log_read_bench(LogReadOptions(readers=2, lines=300))
    assert out["bench"] == "log_reads"
    assert out["lines_per_reader"] == 300
    assert isinstance(out["pages_per_reader"], int)
    assert out["pages_per_reader"] >= 2
    rss = out["manager_rss_mib"]
    assert isinstance(rss, dict)
    assert 0 < rss["before"] <= rss["peak"]
    healthz = out["healthz_ms"]
    assert isinstance(healthz, dict)
    assert set(healthz) == {*PERCENTILES, "max"}
    json.dumps(out)


def test_median_of_runs_takes_the_median_of_every_number() -> None:
    runs = [
        {"tasks_per_s": 10.0, "lat": {"p50": 1.0}, "mode": "stream"},
        {"tasks_per_s": 30.0, "lat": {"p50": 3.0}, "mode": "stream"},
        {"tasks_per_s": 20.0, "lat": {"p50": 9.0}, "mode": "stream"},
    ]
    assert median_of(runs) == {"tasks_per_s": 20.0, "lat": {"p50": 3.0}, "mode": "stream"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "2"], "needs --database"),
        (["--replicas", "0"], "at least 1"),
        (["--database", "mysql://x/y"], "postgresql://"),
        (["--manager-url", "https://m:8443"], "--api-key"),
        (["--manager-url", "https://m:8443", "--api-key", "k", "--replicas", "2"], "--replicas"),
        (["--delegates", "0"], "positive"),
        (["--tasks", "0"], "--tasks"),
        (["--rate", "0"], "--rate"),
        (["--real-delegates", "1", "--idle", "5"], "--idle"),
        (["--real-delegates", "1", "--mode", "poll"], "--mode"),
        (["--repeat", "0"], "--repeat"),
        (["--sequential"], "--real-delegates"),
        (["--real-delegates", "1", "--sequential", "--rate", "5"], "--rate"),
        (["--masker", "--secrets", "0"], "positive"),
        (["--assigner", "--classes", "0"], "positive"),
        (["--log-reads", "--readers", "0"], "positive"),
        (["--log-reads", "--line-bytes", "1048576"], "512 KiB"),
    ],
)
def test_bad_arguments_exit_with_usage_status(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_bench(argv) == 2
    assert message in capsys.readouterr().err


def test_unparseable_arguments_exit_with_usage_status() -> None:
    with pytest.raises(SystemExit) as exc:
        main_bench(["--replicas", "two"])
    assert exc.value.code == 2


def test_more_delegates_than_the_hosts_open_files_allow_is_refused_before_the_run() -> None:
    # The limit is per process: a bench or manager holding N streams needs N sockets and
    # some. Refused at once with what would fit, not met as EMFILE after minutes.
    limit = 1024

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from manager.bench import main_bench; sys.exit(main_bench(sys.argv[1:]))",
            *("--delegates", "5000", "--idle", "1"),
        ],
        preexec_fn=low_limit,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: --delegates 5000 needs 5200 open files a process and this host allows {limit}"
        f" (ulimit -Hn): use at most {limit - 200} delegates"
    ]
