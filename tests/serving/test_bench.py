"""The benchmark harness (bench/): what it reads from wrk and Triton, how it judges targets, what its report may
say, how it fails, and (slow) its Triton and gateway-hop parts end to end against a real Triton."""

from __future__ import annotations

import copy
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import __main__ as bench_main
from bench import load, report, wrk
from bench.triton import stats_delta
from tests.conftest import ROOT

_WRK = """Running 5s test @ http://127.0.0.1:8001/v2/models/m/infer
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    16.93ms    4.12ms 532.40ms   91.02%
    Req/Sec   474.22     31.10   525.00     70.00%
  Latency Distribution
     50%   15.10ms
     75%   17.80ms
     90%   21.02ms
     99%   32.00ms
  2371 requests in 5.00s, 1.01MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    474.00
Transfer/sec:    206.15KB
"""


def test_wrk_output_is_read_with_its_worst_latency() -> None:
    run = wrk.parse(_WRK)

    assert (run.p50_ms, run.p99_ms, run.max_ms, run.rps, run.requests, run.failed) == (
        15.1, 32.0, 532.4, 474.0, 2371, 3
    )  # fmt: skip


def _snapshot(requests: int, executions: int, queue_ns: int, batches: dict[int, tuple[int, int]]) -> dict[str, Any]:
    timed = {"count": requests, "ns": queue_ns}
    return {
        "inference_count": requests,
        "execution_count": executions,
        "inference_stats": {key: timed for key in ("queue", "compute_input", "compute_infer", "compute_output")},
        "batch_stats": [
            {"batch_size": size, "compute_infer": {"count": count, "ns": ns}} for size, (count, ns) in batches.items()
        ],
    }


def test_a_quantile_difference_comes_with_an_interval_that_holds_it() -> None:
    rng = np.random.default_rng(3)
    base = rng.lognormal(np.log(20.0), 0.1, 2000)

    shifted = load.quantile_difference(base, base + 5.0 + rng.normal(0, 0.2, 2000), 0.99)
    same = load.quantile_difference(base, rng.lognormal(np.log(20.0), 0.1, 2000), 0.99)

    assert 4.0 < shifted["low"] < shifted["value"] < shifted["high"] < 6.0
    assert same["low"] < 0 < same["high"]
    with pytest.raises(ValueError, match="at least 2 samples a side, got 1 and 2000"):
        load.quantile_difference([1.0], base, 0.5)


class _Slow(BaseHTTPRequestHandler):
    """Answers a POST after the delay (ms) its path names; /fail answers 500."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        name = self.path.strip("/")
        if name != "fail":
            time.sleep(float(name) / 1000)
        body = b"{}"
        self.send_response(500 if name == "fail" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_interleaved_requests_take_turns_and_keep_every_latency() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        done = load.interleaved(
            {"fast": (f"{url}/0", b"{}", {}), "slow": (f"{url}/4", b"{}", {}), "broken": (f"{url}/fail", b"{}", {})},
            0.5,
        )
    finally:
        server.shutdown()

    fast, slow = done["latencies_ms"]["fast"], done["latencies_ms"]["slow"]
    assert len(fast) == len(slow) >= 20 and done["latencies_ms"]["broken"] == []
    assert done["failed"] == len(fast)  # every turn's request to /fail, counted, none timed
    assert min(slow) >= 4.0 > statistics.median(fast)
    with pytest.raises(ValueError, match="takes http:// URLs"):
        load.interleaved({"tls": ("https://127.0.0.1:1/", b"{}", {})}, 0.1)


def test_triton_statistics_are_differenced_between_snapshots() -> None:
    before = _snapshot(10, 10, 10_000_000, {1: (10, 100_000_000)})
    after = _snapshot(50, 20, 90_000_000, {1: (12, 120_000_000), 4: (8, 160_000_000)})

    delta = stats_delta(before, after)

    assert (delta["requests"], delta["executions"], delta["mean_batch"]) == (40, 10, 4.0)
    assert delta["queue_ms"] == 2.0  # 80 ms over 40 requests
    assert delta["by_batch_size"] == {
        "1": {"executions": 2, "compute_infer_ms": 10.0},
        "4": {"executions": 8, "compute_infer_ms": 20.0},
    }


def _results() -> dict[str, Any]:
    """One run's results with every part measured (made-up but consistent figures)."""
    triton_stats = {
        "requests": 900, "executions": 230, "mean_batch": 3.91, "queue_ms": 1.23, "compute_input_ms": 0.05,
        "compute_infer_ms": 14.6, "compute_output_ms": 0.2,
        "by_batch_size": {
            "1": {"executions": 13, "compute_infer_ms": 9.7}, "4": {"executions": 220, "compute_infer_ms": 14.9}
        },
    }  # fmt: skip
    path = {"p50_ms": 16.4, "p99_ms": 22.9, "rps_c1": 58.3, "rps_c8": 431.0, "p50_ms_c8": 17.2, "p99_ms_c8": 41.0,
            "failed": 0}  # fmt: skip
    return {
        "machine": {
            "cpu": "CPU X",
            "cores": 2,
            "memory_gib": 23.5,
            "gpu": None,
            "python": "3.11.7",
            "torch": "2.14.1",
            "date": "2026-12-04",
            "started": "2026-12-04 21:00 UTC",
        },
        "load_average": {"pipeline": 1.7, "triton": 2.3},
        "failed": {},
        "pipeline": {"full_repro_s": 41.3, "noop_repro_s": 0.71, "noop_repro_cpu_s": 0.64, "noop_runs": 3},
        "triton": {
            "model": "qwen3-vl-v1",
            "instances": 2,
            "kind": "cpu",
            "rounds": 3,
            "seconds_per_run": 5.0,
            "memory": [{"pid": 1, "rss_mib": 841, "pss_mib": 556}, {"pid": 2, "rss_mib": 843, "pss_mib": 557}],
            "c1": {"p50_ms": 16.1, "p99_ms": 21.7, "max_ms": 30.2, "rps": 59.4, "failed": 0},
            "c8": {"p50_ms": 15.3, "p99_ms": 33.9, "max_ms": 71.8, "rps": 463.0, "failed": 0},
            "triton_c1": triton_stats,
            "triton_c8": triton_stats,
        },
        "hop": {
            "direct": {"p50_ms": 0.24, "p99_ms": 0.53, "rps_c1": 2900.0, "rps_c8": 7600.0, "failed": 0},
            "gateway": {"p50_ms": 0.74, "p99_ms": 1.31, "rps_c1": 840.0, "rps_c8": 1800.0, "failed": 0},
            "rounds": 3,
            "seconds_per_run": 5.0,
        },
        "overhead": {
            "direct": path,
            "gateway": {**path, "p50_ms": 17.2, "p99_ms": 24.4, "rps_c8": 402.0},
            "nginx": {**path, "p50_ms": 18.6, "rps_c8": 388.0},
            "rounds": 3,
            "seconds_per_run": 5.0,
            "c1_paired": {
                "direct": {"requests": 1650, "p50_ms": 16.2, "p99_ms": 23.1},
                "gateway": {"requests": 1649, "p50_ms": 16.8, "p99_ms": 24.3},
                "added": {
                    "p50": {"value": 0.6, "low": 0.43, "high": 0.79},
                    "p99": {"value": 1.2, "low": 0.31, "high": 1.87},
                },
                "failed": 0,
                "seconds": 60.0,
                "gateway_cpu_ms_per_request": 0.71,
            },
        },
        "inprocess": {
            "rps_c8": {"triton": 388.0, "inprocess": 77.0},
            "p50_ms_c8": {"triton": 19.0, "inprocess": 98.0},
            "failed": {"triton": 0, "inprocess": 0},
            "ratio": 5.04,
            "weights": "triton-models/qwen3-vl-v1/1",
            "compute_dtype": "float32",
            "quantization": "bitsandbytes 4-bit",
            "rounds": 2,
        },
        "quantization": {
            "served_p50_ms": {"none": 14.2, "bnb-int8": 19.8, "bnb-nf4": 16.7},
            "pipeline": {
                m: {
                    "weights_bytes": 1_903_709 + i,
                    "golden_accuracy": 0.9833,
                    "served_accuracy": 0.9833,
                    "validate_p50_ms": 30.1,
                }
                for i, m in enumerate(("none", "bnb-int8", "bnb-nf4"))
            },
        },
        "rollback": {
            "runs": [2.1, 3.4],
            "max_s": 3.4,
            "median_s": 2.75,
            "client_errors": 0,
            "requests": 1234,
            "error_samples": [],
        },
        "ttft": {
            "measured": True,
            "rounds": 3,
            "seconds_per_run": 5.0,
            "c1": {
                side: {
                    "ttft_p50_ms": 20.0 + 2 * (side == "nginx"),
                    "ttft_p95_ms": 30.0,
                    "e2e_p50_ms": 40.0,
                    "output_tokens_per_s": 180.0,
                    "answers": 100,
                    "failed": 0,
                }
                for side in ("nginx", "direct")
            },
            "c8": {
                side: {
                    "ttft_p50_ms": 60.0,
                    "ttft_p95_ms": 90.0,
                    "e2e_p50_ms": 120.0,
                    "output_tokens_per_s": 500.0,
                    "answers": 400,
                    "failed": 0,
                }
                for side in ("nginx", "direct")
            },
            "ratio": 1.1,
        },
        "bench_s": 612.0,
        "sections": {},
    }


def _verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in report.verdicts(results, report.summarize(results))}


def test_targets_met_on_a_valid_baseline() -> None:
    rows = _verdicts(_results())

    assert {key: row["verdict"] for key, row in rows.items()} == {t.key: "met" for t in report.TARGETS}


def test_a_figure_over_failed_requests_is_inconclusive() -> None:
    # Seen: the edge's per-client rate limit answered 429s in a millisecond, "4,343 req/s" through nginx.
    results = _results()
    results["overhead"]["nginx"]["failed"] = 20367
    row = _verdicts(results)["gateway_throughput_ratio_c8"]
    assert row["verdict"] == "inconclusive" and "20,367 requests failed" in row["why"]


def test_a_slow_first_token_says_what_the_path_added() -> None:
    results = _results()
    results["ttft"]["ratio"] = 1.5
    results["ttft"]["c1"]["nginx"]["ttft_p50_ms"] = 30.0
    row = _verdicts(results)["ttft_p50_ratio"]
    assert row["verdict"] == "missed" and "the path adds 10.0 ms" in row["why"]


def test_a_gateway_faster_than_direct_triton_is_inconclusive_not_met() -> None:
    results = _results()
    results["overhead"]["gateway"]["rps_c8"] = results["overhead"]["direct"]["rps_c8"] * 1.2

    row = _verdicts(results)["gateway_throughput_ratio_c8"]

    assert row["verdict"] == "inconclusive"
    assert "direct side is the broken one" in row["why"]


def _added_p99(value: float, low: float, high: float) -> dict[str, Any]:
    results = _results()
    results["overhead"]["c1_paired"]["added"]["p99"] = {"value": value, "low": low, "high": high}
    return _verdicts(results)["gateway_added_p99_ms"]


def test_a_gateway_that_adds_less_than_nothing_is_inconclusive() -> None:
    row = _added_p99(-1.7, -2.9, -0.4)  # the whole interval below 0: the direct side was the slower one

    assert row["verdict"] == "inconclusive"
    assert "direct side measured slower" in row["why"]


def test_what_the_gateway_adds_is_judged_on_its_whole_interval() -> None:
    # A noisy negative estimate whose interval stays under the target: at most 1.6 ms, so met.
    assert _added_p99(-0.3, -1.9, 1.6)["verdict"] == "met"
    # The interval holds the target: the run cannot tell, whichever side the estimate falls.
    for value in (1.5, 2.4):
        row = _added_p99(value, 0.6, 3.1)
        assert row["verdict"] == "inconclusive" and "cannot tell" in row["why"], row
    row = _added_p99(3.4, 2.2, 4.9)
    assert row["verdict"] == "missed" and "gateway p50 16.80 / p99 24.30 ms" in row["why"]
    assert "used 0.71 ms of CPU per request" in row["why"]


def test_the_listening_process_and_its_cpu_time_are_read_from_proc() -> None:
    from bench.measure import cpu_seconds, listening_pid

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    try:
        assert listening_pid(server.server_address[1]) == os.getpid()
    finally:
        server.server_close()
    spent = cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert cpu_seconds(os.getpid()) > spent > 0
    with pytest.raises(RuntimeError, match="no process is listening on port 1"):
        listening_pid(1)


def test_the_interval_the_verdict_rests_on_is_in_the_report() -> None:
    results = _results()
    results["summary"] = report.summarize(results)

    text = report.markdown(results)

    assert "| 1.20 (95%: 0.31 to 1.87) | ≤ 2.00 | met |" in text
    assert "taken in turn for 60 s" in text and "direct 1,650 requests" in text


def test_a_missed_target_shows_what_the_run_measured_about_it() -> None:
    results = _results()
    results["triton"]["c8"] |= {"p99_ms": 520.0, "max_ms": 531.0}
    results["pipeline"] |= {"noop_repro_s": 1.79, "noop_repro_cpu_s": 0.66}

    rows = _verdicts(results)

    assert rows["direct_c8_p99_over_p50"]["verdict"] == "missed"
    assert "worst 531 ms" in rows["direct_c8_p99_over_p50"]["why"]
    assert "queue time 1.2 ms" in rows["direct_c8_p99_over_p50"]["why"]
    assert rows["noop_repro_s"]["verdict"] == "missed"
    assert "1.79 s wall, of which 0.66 s CPU" in rows["noop_repro_s"]["why"]


def test_a_failed_part_leaves_its_targets_not_measured_with_the_reason() -> None:
    results = _results()
    del results["overhead"]
    results["failed"] = {"overhead": "ScratchError: timed out after 120 s waiting for the gateways"}

    rows = _verdicts(results)

    for key in ("gateway_added_p50_ms", "gateway_added_p99_ms", "gateway_throughput_ratio_c8"):
        assert rows[key]["verdict"] == "not measured"
        assert "overhead part failed: ScratchError" in rows[key]["why"]
    assert "Failed parts: overhead" in report.markdown(results | {"summary": report.summarize(results)})


def _perturbed(value: Any, path: str = "") -> Any:
    """Every numeric leaf moved by its own factor and offset (so ratios and differences move too)."""
    if isinstance(value, dict):
        return {k: _perturbed(v, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_perturbed(v, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    seed = sum(i * ord(c) for i, c in enumerate(path, 1))
    factor = 1.37 + (seed % 89) / 31
    return type(value)(value * factor + factor)


_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def _numbers(results: dict[str, Any]) -> set[str]:
    results = copy.deepcopy(results)
    results["summary"] = report.summarize(results)
    text = report.markdown(results)
    return set(_NUMBER.findall(text))


def test_the_report_prints_no_number_the_run_did_not_measure() -> None:
    """Move every measured figure: a number that stays put in the report is a fixed one (a target, or words)."""
    results = _results()
    moved = _perturbed(results) | {"machine": results["machine"]}

    fixed = _numbers(results) & _numbers(moved)

    targets = {report._fmt(t.target) for t in report.TARGETS}
    # Words: "concurrency 1/8", "p50/p99", "KServe v2", "weight 0", "4-bit", "1-minute"; the machine and date.
    # "95%" names the intervals' level.
    words = {
        "0",
        "0,",
        "1",
        "4",
        "8",
        "8,",
        "50",
        "95",
        "99",
        "2",
        "23.5",
        "3.11",
        "2.14",
        "2026",
        "12",
        "04",
        "21",
        "00",
    }
    assert fixed <= targets | words, sorted(fixed - targets - words)


def test_a_registered_section_is_copied_into_the_results_and_rendered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "canary_eval.json").write_text(json.dumps({"false_rollback": 0.02, "measured": "2026-12-04"}))
    (tmp_path / "unknown.json").write_text("{}")
    monkeypatch.setitem(report.SECTIONS, "canary_eval", lambda s: f"Canary judgement: {s['false_rollback']:.0%}.")
    results = _results()

    results["sections"] = report.collect_sections(tmp_path)
    results["summary"] = report.summarize(results)

    assert results["sections"] == {"canary_eval": {"false_rollback": 0.02, "measured": "2026-12-04"}}
    assert report.markdown(results).rstrip().endswith("Canary judgement: 2%.")


def test_a_failing_part_is_named_the_rest_still_runs_and_the_exit_status_is_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("dvc repro failed (1): no such stage")

    monkeypatch.setattr(bench_main.measure, "repro", broken)
    monkeypatch.setattr(bench_main.measure, "copy_repository", lambda dest: dest)
    monkeypatch.setattr(bench_main, "machine", lambda: {"cores": 2})

    status = bench_main.main(["--parts", "pipeline,quantization", "--workdir", str(tmp_path)])

    out, err = capsys.readouterr()
    assert status == 1
    assert "make bench: part 'pipeline' failed: RuntimeError: dvc repro failed (1): no such stage" in err
    assert "make bench: part 'quantization' failed: not run: it needs the pipeline part" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert "ttft" not in summary  # a stack part: not reached once the pipeline failed
    assert set(summary["failed"]) == {"pipeline", "quantization"}
    assert "no such stage" in (tmp_path / "pipeline.traceback").read_text()


def test_an_unknown_part_is_refused_naming_the_parts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(["--parts", "triton,gpu"])

    assert exit_info.value.code == 2
    assert "unknown part(s) gpu; the parts are pipeline, triton" in capsys.readouterr().err


def _run_parts(parts: str, workdir: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", "--parts", parts, "--rounds", "1", "--seconds", "2"]
    done = subprocess.run(
        [*command, "--workdir", str(workdir)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.triton
@pytest.mark.slow
def test_the_triton_part_measures_batches_and_every_instance(tmp_path: Path) -> None:
    result = _run_parts("triton", tmp_path)

    triton = result["triton"]
    assert result["failed"] == {}
    assert triton["instances"] >= 2 and len(triton["memory"]) == triton["instances"]
    assert all(m["rss_mib"] > 50 for m in triton["memory"])
    assert triton["c1"]["rps"] > 0 and triton["c8"]["rps"] > 0
    # Eight closed-loop clients share executions; one client's requests mostly run alone.
    assert triton["triton_c8"]["mean_batch"] > 1.5
    assert triton["triton_c8"]["requests"] == sum(
        int(size) * e["executions"] for size, e in triton["triton_c8"]["by_batch_size"].items()
    )
    assert json.loads((tmp_path / "results.json").read_text())["triton"] == triton  # not bench/: a partial run


@pytest.mark.triton
@pytest.mark.slow
def test_the_hop_part_times_the_gateway_over_a_zero_work_model(tmp_path: Path) -> None:
    hop = _run_parts("hop", tmp_path)["hop"]

    assert hop["direct"]["failed"] == 0 and hop["gateway"]["failed"] == 0
    assert hop["direct"]["rps_c8"] > 0 and hop["gateway"]["rps_c8"] > 0
    assert hop["direct"]["p50_ms"] > 0 and hop["gateway"]["p50_ms"] > 0


@pytest.mark.slow
def test_the_in_process_baseline_serves_the_build_s_own_weights_in_its_dtype(
    int8_checkpoint: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from bench.inprocess import create_app, served_precision
    from bench.requests import chat_body
    from serving.triton.packaging import package
    from tests.serving.conftest import BACKEND, MODEL, serving_params

    result = package(int8_checkpoint, BACKEND, tmp_path, MODEL, serving_params(compute_dtype="float32"))
    model_dir = tmp_path / result.triton_model

    with TestClient(create_app(model_dir)) as client:
        response = client.post(
            "/v1/chat/completions", content=chat_body(), headers={"Content-Type": "application/json"}
        )

    assert served_precision(model_dir) == (model_dir / "1", "float32")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert response.json()["usage"]["completion_tokens"] >= 1
