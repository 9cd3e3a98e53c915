"""A real Prometheus scrapes a running `marc serve` driven by `marc-loadtest`; every recording rule and every
dashboard panel's query must then return data, and every rule must evaluate without error.

Needs: the release binaries (`cargo build --release`), Debian's `prometheus` package. deploy/check.sh sets both up.
Every process listens on 127.0.0.1 only, on ports the OS picks, and is stopped at the end.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

from support import REPO, RULES, alert_expression, dashboard_queries, recording_rules, rule_expressions

BIN = Path(os.environ.get("MARC_BIN_DIR", REPO / "target" / "release"))
SCRAPE_INTERVAL_S = 1
LOAD_SECONDS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def traffic(path: Path):
    """A trace mixing what the dashboard shows: text and token ids, the default head and raw states, unary and
    stream calls, and calls with an unknown head (INVALID_ARGUMENT), so every panel has a series."""
    lines = []
    for i in range(40):
        if i % 4 == 0:
            request = {"inputs": [{"id": f"t{i}", "text": f"item number {i} for the ranking service"}]}
        elif i % 4 == 1:
            request = {"inputs": [{"id": f"r{i}", "token_ids": [(7 * i + k) % 4000 + 1 for k in range(24)]}], "raw": True, "layer": 3, "pooling": "mean"}
        elif i % 4 == 2:
            request = {"inputs": [{"id": f"b{i}-{j}", "token_ids": [(i + j + k) % 4000 + 1 for k in range(40)]} for j in range(4)]}
        else:
            request = {"inputs": [{"id": f"x{i}", "token_ids": [1, 2, 3]}], "head": "no-such-head"}
        rpc = "EmbedStream" if i % 5 == 0 else "Embed"
        lines.append(json.dumps({"offset_ns": i * 10_000_000, "rpc": rpc, "request": request}))
    path.write_text("\n".join(lines) + "\n")


class RealPrometheus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("prometheus",):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is not installed: run deploy/check.sh, which installs Debian's prometheus")
        for binary in ("marc", "marc-loadtest"):
            if not (BIN / binary).is_file():
                raise AssertionError(f"{BIN / binary} is missing: cargo build --release --workspace")
        cls.dir = Path(tempfile.mkdtemp(prefix="marc-prometheus-"))
        cls.processes = []
        cls.logs = []
        try:
            cls.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls):
        # marc serve on OS-chosen ports; it prints the addresses it bound.
        server_log = cls.log_file("marc.log")
        marc = subprocess.Popen(
            [BIN / "marc", "serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
             "--max-batch-tokens", "512", "--max-item-tokens", "512", "--threads", "1"],
            stdout=server_log, stderr=subprocess.STDOUT, cwd=cls.dir,
        )
        cls.processes.append(marc)

        def addresses():
            text = (cls.dir / "marc.log").read_text()
            assert marc.poll() is None, f"marc serve exited:\n{text}"
            m = re.search(r"gRPC on (\S+), metrics on http://(\S+)/metrics", text)
            return m and (m.group(1), m.group(2))

        cls.grpc, cls.metrics = wait_for("marc serve to bind", addresses)
        def serving():
            assert marc.poll() is None, f"marc serve exited:\n{(cls.dir / 'marc.log').read_text()}"
            return subprocess.run([BIN / "marc", "health", "--addr", cls.grpc], capture_output=True).returncode == 0

        wait_for("marc to report SERVING", serving)

        cls.prometheus_addr = f"127.0.0.1:{free_port()}"
        config = cls.dir / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            f"rule_files:\n  - {RULES}\n"
            f"scrape_configs:\n  - job_name: marc\n    static_configs:\n      - targets: ['{cls.metrics}']\n"
        )
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={cls.dir / 'tsdb'}",
             f"--web.listen-address={cls.prometheus_addr}", "--log.level=warn"],
            stdout=cls.log_file("prometheus.log"), stderr=subprocess.STDOUT,
        )
        cls.processes.append(prometheus)
        def scraped():
            assert prometheus.poll() is None, f"prometheus exited:\n{(cls.dir / 'prometheus.log').read_text()}"
            try:
                return cls.query('up{job="marc"} == 1')
            except OSError:  # not listening yet
                return None

        wait_for("Prometheus to scrape marc", scraped)

        trace = cls.dir / "traffic.jsonl"
        traffic(trace)
        load = subprocess.run(
            [BIN / "marc-loadtest", "rate", "--target", cls.grpc, "--rps", "100", "--trace", str(trace),
             "--duration", f"{LOAD_SECONDS}s", "--quiet", "--json", str(cls.dir / "report.json")],
            capture_output=True, text=True, timeout=120,
        )
        assert load.returncode == 0, f"marc-loadtest failed:\n{load.stdout}\n{load.stderr}"
        cls.report = json.loads((cls.dir / "report.json").read_text())
        # Two more scrapes and rule evaluations after the last call.
        time.sleep(3 * SCRAPE_INTERVAL_S)

    @classmethod
    def log_file(cls, name: str):
        log = open(cls.dir / name, "w")
        cls.logs.append(log)
        return log

    @classmethod
    def tearDownClass(cls):
        for process in reversed(cls.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in cls.logs:
            log.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def query(cls, promql: str) -> list:
        url = f"http://{cls.prometheus_addr}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        body = get_json(url)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def test_the_load_ran(self):
        calls = float(self.query('sum(marc_requests_total{rpc=~"Embed|EmbedStream"})')[0]["value"][1])
        self.assertGreaterEqual(calls, self.report["calls"]["sent"])
        self.assertGreater(self.report["calls"]["ok"], 0)

    def test_the_metrics_page_passes_promtools_lint(self):
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as response:
            page = response.read()
        lint = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True)
        self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)
        self.assertEqual(lint.stdout + lint.stderr, b"", "promtool's lint has remarks")

    def test_every_recording_rule_has_data(self):
        names = recording_rules()
        self.assertGreaterEqual(len(names), 10)
        for name in names:
            with self.subTest(rule=name):
                self.assertTrue(self.query(name), f"{name} returned no data")

    def test_every_dashboard_panel_has_data(self):
        queries = dashboard_queries(job="marc", instance=".+", rate_interval="30s")
        self.assertGreaterEqual(len(queries), 20)
        for title, expr in queries:
            with self.subTest(panel=title, expr=expr):
                self.assertTrue(self.query(expr), f"panel {title!r}: no data for {expr}")

    def test_every_rule_evaluates_without_error(self):
        groups = get_json(f"http://{self.prometheus_addr}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        self.assertEqual(len(rules), len(rule_expressions()))
        for rule in rules:
            with self.subTest(rule=rule["name"]):
                self.assertEqual(rule["health"], "ok", rule.get("lastError"))

    def test_a_healthy_server_raises_no_alert(self):
        # Pending counts too: the `for:` durations are longer than this test.
        alerts = get_json(f"http://{self.prometheus_addr}/api/v1/alerts")["data"]["alerts"]
        names = [a["labels"]["alertname"] for a in alerts]
        latency_alert = "MarcLatencyP99High"
        # The latency SLO is the one condition a slow or shared machine can really break with this load (a few
        # calls past 50 ms are 1% of them). A call's latency at the client includes its time in the server, so
        # whenever the server's p99 is past the SLO the client's is too: the alert is a false alarm only if the
        # load generator's own p99 stayed within it.
        slo_s = float(re.fullmatch(r"job:marc_request_duration_seconds:p99_5m > ([0-9.]+)",
                                   alert_expression(latency_alert)).group(1))
        client_p99_ms = self.report["latency_ms"]["uncorrected"]["p99"]
        if latency_alert in names and client_p99_ms > slo_s * 1000:
            print(f"note: {latency_alert} is pending and right: marc-loadtest measured p99 {client_p99_ms} ms "
                  f"against the {slo_s * 1000:g} ms SLO (this machine was too slow for the load to be healthy)")
            names.remove(latency_alert)
        self.assertEqual(names, [], f"marc-loadtest measured p99 {client_p99_ms} ms")

    def test_the_error_ratio_sees_the_invalid_calls_as_the_callers(self):
        # INVALID_ARGUMENT is the caller's fault: it shows by code, not in the error ratio.
        self.assertTrue(self.query('job_code:marc_requests:rate5m{code="INVALID_ARGUMENT"} > 0'))
        ratio = self.query("job:marc_request_errors:ratio_rate5m")
        self.assertEqual(float(ratio[0]["value"][1]), 0.0)


if __name__ == "__main__":
    unittest.main()
