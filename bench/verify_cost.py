"""The delegate's CPU for judging one verification: 10 queries, a 10-minute window at a 15 s
step (41 points per window), from Prometheus's JSON to the report.

    .venv/bin/python bench/verify_cost.py

Prints one JSON line: CPU milliseconds per verification (time.process_time), median and
max over the repeats, for the judging alone and for parsing plus judging, without and with
the Mann-Whitney test (scipy, imported once before measuring; its first import is reported
on its own).
"""

from __future__ import annotations

import json
import random
import statistics
import time

from delegate.verify.provider import parse_matrix
from delegate.verify.runner import judge_query, overall
from shared.verify.report import Report
from shared.verify.spec import VerifySpec

QUERIES = 10
WINDOW_S = 600
STEP_S = 15
REPEATS = 50


def _spec(significance: float | None) -> VerifySpec:
    return VerifySpec.model_validate(
        {
            "provider": {"url": "http://prom:9090"},
            "queries": [
                {
                    "name": f"q{i}",
                    "query": f"sum(rate(errors_total{{q='{i}'}}[1m]))",
                    "bad": "up",
                    "threshold": {"ratio": 0.2},
                    "significance": significance,
                }
                for i in range(QUERIES)
            ],
            "window": {"analysis": WINDOW_S, "step": STEP_S},
        }
    )


def _body(start: float, rng: random.Random) -> bytes:
    values = [[start + i * STEP_S, str(rng.gauss(5.0, 0.5))] for i in range(WINDOW_S // STEP_S + 1)]
    doc = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]},
    }
    return json.dumps(doc).encode()


def _once(spec: VerifySpec, bodies: list[tuple[bytes, bytes]], parse: bool) -> float:
    parsed = [(parse_matrix(b), parse_matrix(a)) for b, a in bodies] if not parse else []
    t0 = time.process_time()
    series = [(parse_matrix(b), parse_matrix(a)) for b, a in bodies] if parse else parsed
    reports = [
        judge_query(q, spec, before, after, STEP_S)
        for q, (before, after) in zip(spec.queries, series, strict=True)
    ]
    verdict, reason = overall(reports)
    Report(
        verdict=verdict.value,
        reason=reason,
        provider="prometheus at http://prom:9090",
        baseline_start=0,
        baseline_end=WINDOW_S,
        analysis_start=WINDOW_S,
        analysis_end=2 * WINDOW_S,
        queries=reports,
    ).model_dump_json()
    return (time.process_time() - t0) * 1000


def main() -> None:
    rng = random.Random(20)
    bodies = [(_body(0, rng), _body(WINDOW_S, rng)) for _ in range(QUERIES)]
    t0 = time.process_time()
    import scipy.stats  # noqa: F401 - the first import, measured alone

    scipy_import_ms = (time.process_time() - t0) * 1000
    out: dict[str, object] = {"queries": QUERIES, "points_per_window": WINDOW_S // STEP_S + 1}
    for label, significance in (("median", None), ("median_and_mann_whitney", 0.05)):
        spec = _spec(significance)
        for parse in (False, True):
            _once(spec, bodies, parse)  # warm
            runs = [_once(spec, bodies, parse) for _ in range(REPEATS)]
            key = f"{label}{'_with_parsing' if parse else ''}_cpu_ms"
            out[key] = {"median": round(statistics.median(runs), 2), "max": round(max(runs), 2)}
    out["scipy_first_import_cpu_ms"] = round(scipy_import_ms, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
