"""--metrics against the real kernel: known connects, exact counters, read
straight from /metrics and through a real Prometheus server scraping it.

Every tracer is limited with -P to ports of this test, so other connects on
the machine cannot change the counts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import dns_attacks
import pytest
from conftest import (
    comm_of,
    free_port,
    refused_connect,
    run_tool,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from test_dns_trace import SEND_FROM_PORT_53

from tcpconnect.metrics import Exporter, count_fields
from tcpconnect.tracer import Tracer, TracerConfig

NOBODY = 65534
# Loopback needs no proxy, whatever the environment says.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROMETHEUS = "/usr/bin/prometheus"


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics: name -> {sorted label items: value}."""
    url = f"http://{host}:{port}/metrics" if ":" not in host else f"http://[{host}]:{port}/metrics"
    text = HTTP.open(url, timeout=10).read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def connects_by(samples: dict, *labels: str) -> dict[tuple, float]:
    """tcpconnect_connects_total as {(values of labels...): count}."""
    return {tuple(dict(key)[name] for name in labels): value
            for key, value in samples["tcpconnect_connects_total"].items()}


def connect_times(family: int, addr: str, port: int, times: int) -> None:
    for _ in range(times):
        refused_connect(family, port, addr)


def test_quiet_exporter_counts_exactly(trace, workload):
    port, other, metrics = free_port(), free_port(), free_port()
    nobody = workload(user=NOBODY)
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "-P", f"{port},{other}",
              "--metrics-labels", "comm,saddr,daddr,dport,uid")
    me = comm_of(os.getpid())
    connect_times(4, "127.0.0.1", port, 3)
    connect_times(4, "127.0.0.2", port, 1)
    connect_times(6, "::1", other, 2)
    connect_times(6, "::ffff:127.0.0.1", port, 2)  # IPv4 on the wire
    for _ in range(4):
        nobody.connect(4, "127.0.0.1", port)
    samples = scrape(metrics)
    uid = str(os.getuid())
    assert connects_by(samples, "comm", "saddr", "daddr", "dport", "uid") == {
        (me, "127.0.0.1", "127.0.0.1", str(port), uid): 5,
        (me, "127.0.0.1", "127.0.0.2", str(port), uid): 1,
        (me, "::1", "::1", str(other), uid): 2,
        (nobody.comm, "127.0.0.1", "127.0.0.1", str(port), str(NOBODY)): 4,
    }
    assert samples["tcpconnect_series_dropped_total"] == {(): 0}
    assert samples["tcpconnect_uncounted_connects_total"] == {(): 0}
    assert samples["tcpconnect_skipped_program_runs_total"] == {(): 0}
    assert samples["tcpconnect_unfollowed_connect_calls_total"] == {(): 0}
    assert samples["tcpconnect_lost_events_total"] == {(("ring", "events"),): 0,
                                                       (("ring", "dns"),): 0}
    # prometheus-client's own process metrics are served too.
    assert samples["process_cpu_seconds_total"][()] > 0
    # Counters are cumulative across scrapes (each scrape drains the kernel).
    connect_times(4, "127.0.0.2", port, 2)
    assert connects_by(scrape(metrics), "daddr", "dport", "uid")[
        ("127.0.0.2", str(port), uid)] == 3
    t.stop()
    assert (t.returncode, t.stdout, t.stderr) == (0, "", "")


@pytest.mark.user_space
def test_rows_and_metrics_together_over_ipv6(trace):
    port, metrics = free_port(), free_port(socket.AF_INET6)
    t = trace("--metrics", f"[::1]:{metrics}", "-P", str(port))
    connect_times(4, "127.0.0.1", port, 2)
    connect_times(6, "::1", port, 1)
    me = comm_of(os.getpid())
    assert connects_by(scrape(metrics, "::1"), "comm", "daddr", "dport") == {
        (me, "127.0.0.1", str(port)): 2, (me, "::1", str(port)): 1}
    t.stop()
    rows = [r.split() for r in t.rows]
    assert [(r[1], r[2], r[4], r[5]) for r in rows] == [
        (me[:12], "4", "127.0.0.1", str(port)), (me[:12], "4", "127.0.0.1", str(port)),
        (me[:12], "6", "::1", str(port))]
    assert t.stderr == ""


@pytest.mark.host_only
def test_series_cap_counts_the_rest_as_other(trace):
    ports = [free_port() for _ in range(5)]
    metrics = free_port()
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "--metrics-max-series", "3",
              "--metrics-labels", "dport", "-P", ",".join(map(str, ports)))
    # One port per scrape, so which three make series is known: the first.
    for n, port in enumerate(ports, 1):
        connect_times(4, "127.0.0.1", port, n)
        samples = scrape(metrics)
    assert connects_by(samples, "dport") == {
        (str(ports[0]),): 1, (str(ports[1]),): 2, (str(ports[2]),): 3, ("other",): 4 + 5}
    assert samples["tcpconnect_series_dropped_total"] == {(): 9}
    # A series that exists keeps counting past the cap.
    connect_times(4, "127.0.0.1", ports[0], 1)
    assert connects_by(scrape(metrics), "dport")[(str(ports[0]),)] == 2
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.host_only
def test_a_process_called_other_shares_the_other_series(trace, tmp_path):
    # Its own series while under the cap, then the overflow adds to it: one
    # series with those labels, as Prometheus accepts only one.
    port, metrics = free_port(), free_port()
    for name in ("other", "third"):
        (tmp_path / name).symlink_to("/usr/bin/python3")  # comm is the name run
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "--metrics-max-series", "2",
              "--metrics-labels", "comm", "-P", str(port))
    connect = f"import socket; socket.socket().connect_ex(('127.0.0.1', {port}))"
    subprocess.run([tmp_path / "other", "-c", connect], check=True)
    connect_times(4, "127.0.0.1", port, 1)
    scrape(metrics)  # "other" and this process have their series now
    subprocess.run([tmp_path / "third", "-c", connect], check=True)
    text = HTTP.open(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    t.stop()
    # In any order: both came in one drain, in the kernel table's order.
    assert sorted(line for line in text.splitlines()
                  if line.startswith("tcpconnect_connects_total")) == sorted([
        'tcpconnect_connects_total{comm="other"} 2.0',
        f'tcpconnect_connects_total{{comm="{comm_of(os.getpid())}"}} 1.0'])
    assert "tcpconnect_series_dropped_total 1.0" in text.splitlines()
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.user_space
def test_count_tables_still_print_beside_metrics(trace):
    port, metrics = free_port(), free_port()
    t = trace("-c", "--metrics", f"127.0.0.1:{metrics}", "-P", str(port))
    connect_times(4, "127.0.0.1", port, 2)
    connect_times(4, "127.0.0.2", port, 1)
    me = comm_of(os.getpid())
    # The scrape drains the kernel's table; the printed table must not lose it.
    assert connects_by(scrape(metrics), "comm", "daddr", "dport") == {
        (me, "127.0.0.1", str(port)): 2, (me, "127.0.0.2", str(port)): 1}
    connect_times(4, "127.0.0.1", port, 1)
    t.stop()
    header = "%-25s %-25s %-20s %-10s" % ("LADDR", "RADDR", "RPORT", "CONNECTS")
    assert t.stdout == "\n".join(["", header,
                                  "%-25s %-25s %-20s %-10d" % ("127.0.0.1", "127.0.0.1", port, 3),
                                  "%-25s %-25s %-20s %-10d" % ("127.0.0.1", "127.0.0.2", port, 1),
                                  ""])
    assert (t.returncode, t.stderr) == (0, "")


def test_full_kernel_table_is_exported_as_uncounted():
    # A real tracer with room for two keys per table and the exporter on it,
    # in this process: three destinations before any scrape, so the third
    # connect finds the table full.
    port, metrics = free_port(), free_port()
    labels = ("daddr", "dport")
    exporter = Exporter("127.0.0.1", metrics, labels, max_series=10)
    try:
        with Tracer(TracerConfig(count=True, ports=(port,), count_capacity=2,
                                 count_fields=count_fields(labels, table=False))) as tracer, \
                exporter.watching(tracer, None):
            for addr in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
                refused_connect(4, port, addr)
            samples = scrape(metrics)
            # The scrape emptied the table: the same destination fits again.
            refused_connect(4, port, "127.0.0.3")
            again = scrape(metrics)
    finally:
        exporter.close()
    assert connects_by(samples, "daddr") == {("127.0.0.1",): 1, ("127.0.0.2",): 1}
    assert samples["tcpconnect_uncounted_connects_total"] == {(): 1}
    assert connects_by(again, "daddr") == {("127.0.0.1",): 1, ("127.0.0.2",): 1,
                                           ("127.0.0.3",): 1}
    assert again["tcpconnect_uncounted_connects_total"] == {(): 1}


@pytest.mark.user_space
def test_dns_responses_skipped_are_exported(trace):
    # Sent by nobody in a network namespace of its own, seen on its loopback.
    port, metrics = free_port(), free_port()
    malformed = b"\x12\x34\x81"  # shorter than a DNS header
    refused = dns_attacks.pointer_chain(200)
    t = trace("-d", "--metrics", f"127.0.0.1:{metrics}", "-P", str(port))
    subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "unshare", "-Urn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
         "/usr/bin/python3", "-c", SEND_FROM_PORT_53, *[malformed.hex()] * 3,
         *[refused.hex()] * 2], check=True, timeout=30)

    def skipped() -> dict:
        return scrape(metrics).get("tcpconnect_dns_responses_skipped_total", {})

    # Other DNS traffic on the machine may add to the counts, never take away.
    wait_for(lambda: skipped().get((("reason", "malformed"),), 0) >= 3
             and skipped().get((("reason", "refused"),), 0) >= 2, what="skipped answers")
    t.stop()
    assert t.returncode == 0


@pytest.mark.host_only
def test_port_in_use_is_one_line_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_tool("--metrics", f"127.0.0.1:{port}", "-q")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"tcpconnect: --metrics 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.host_only
def test_address_not_on_this_host_is_one_line_exit_1():
    # TEST-NET-1 is never assigned to a host: binding to it fails locally.
    done = run_tool("--metrics", "192.0.2.1:9100", "-q")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "tcpconnect: --metrics 192.0.2.1:9100: Cannot assign requested address\n"


@pytest.mark.parametrize("args,message", [
    (["--metrics", "9100"], "argument --metrics: invalid address '9100'"),
    (["--metrics", "::1:9100"], "argument --metrics: invalid address '::1:9100'"),
    (["--metrics", "127.0.0.1:0"], "argument --metrics: invalid address '127.0.0.1:0'"),
    (["--metrics", "[::1]:x"], "argument --metrics: invalid address '[::1]:x'"),
    (["--metrics", ":1"], "argument --metrics: invalid address ':1'"),
    (["--metrics", "h:1", "--metrics-labels", "comm,pid"],
     "argument --metrics-labels: invalid label 'pid' in 'comm,pid'"),
    (["--metrics", "h:1", "--metrics-labels", ""], "argument --metrics-labels: invalid label ''"),
    (["--metrics", "h:1", "--metrics-max-series", "0"],
     "argument --metrics-max-series: invalid series count '0'"),
    (["--metrics-labels", "comm"], "--metrics-labels needs --metrics"),
    (["-q"], "-q/--quiet needs --metrics"),
    (["--metrics", "h:1", "-q", "-j"], "-j/--json cannot be used with -q/--quiet"),
])
@pytest.mark.host_only
def test_bad_metrics_options_are_one_line_exit_2(args, message):
    done = run_tool(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"tcpconnect: error: {message}"), done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.host_only
def test_missing_prometheus_client_is_one_line(tmp_path):
    # A module of that name that fails to import, as when it is not installed.
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('absent')\n")
    done = run_tool("--metrics", "127.0.0.1:9100", "-q",
                    env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode, done.stderr) == (
        1, "tcpconnect: --metrics needs the Python package prometheus-client "
           "(pip install prometheus-client)\n")


# --- Through a real Prometheus server -------------------------------------------------

class Prometheus:
    """/usr/bin/prometheus scraping one target every second, with its own
    config and storage in a temporary directory (not Debian's service).
    It is ready within ~0.1 s, but hands new targets to its scrapers only
    every 5 s (a fixed throttle of its discovery), so the first scrape comes
    ~6 s after the start: that is most of this test's time."""

    def __init__(self, workdir: Path, target: str, **scrape: object) -> None:
        """`scrape`: more of the job's scrape_config (scheme, tls_config,
        basic_auth)."""
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "tcpconnect",
                                "static_configs": [{"targets": [target]}], **scrape}],
        }))
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "log", "w"), cwd=workdir)
        wait_for(self._ready, timeout=30, what="Prometheus to be ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited"
        try:
            return HTTP.open(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def query(self, promql: str) -> dict:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        return json.loads(HTTP.open(url, timeout=5).read())

    def values(self, promql: str, label: str) -> dict[str, float]:
        answer = self.query(promql)
        assert answer["status"] == "success", answer
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in answer["data"]["result"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def prometheus(tmp_path) -> Iterator[type[Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str, **scrape: object) -> Prometheus:
        server = Prometheus(tmp_path, target, **scrape)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


@pytest.mark.host_only
def test_prometheus_scrapes_exact_counts_and_the_cap(trace, prometheus):
    ports = [free_port() for _ in range(5)]
    metrics = free_port()
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "--metrics-max-series", "3",
              "-P", ",".join(map(str, ports)))
    server = prometheus(f"127.0.0.1:{metrics}")
    me = comm_of(os.getpid())
    for n, port in enumerate(ports, 1):
        connect_times(4, "127.0.0.1", port, n)
        scrape(metrics)  # so the first three ports are the ones with series
    expected = {str(ports[0]): 1, str(ports[1]): 2, str(ports[2]): 3, "other": 9}
    query = 'sum by (dport) (tcpconnect_connects_total{job="tcpconnect"})'
    deadline = time.monotonic() + 20
    while (got := server.values(query, "dport")) != expected:
        assert time.monotonic() < deadline, f"Prometheus has {got}, expected {expected}"
        time.sleep(0.2)
    answer = server.query(f'tcpconnect_connects_total{{dport="{ports[2]}"}}')
    [series] = answer["data"]["result"]
    assert {k: v for k, v in series["metric"].items() if k not in ("instance", "job")} == {
        "__name__": "tcpconnect_connects_total", "comm": me, "daddr": "127.0.0.1",
        "dport": str(ports[2])}
    assert series["metric"]["instance"] == f"127.0.0.1:{metrics}"
    assert server.values("tcpconnect_series_dropped_total", "") == {"": 9}
    assert server.values("tcpconnect_uncounted_connects_total", "") == {"": 0}
    assert server.values("up", "") == {"": 1}
    # The answer as Prometheus gave it, for whoever reads the test log (pytest -s).
    print(query, json.dumps(server.query(query)))
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")



@pytest.mark.user_space
def test_container_and_unit_labels_name_the_cgroup(trace, workload, cgroups):
    container_id = "c0ffee" * 10 + "abcd"
    docker = cgroups.make(f"system.slice/docker-{container_id}.scope")
    service = cgroups.make("system.slice/nginx.service")
    in_docker, in_service, elsewhere = workload(), workload(), workload()
    cgroups.move(in_docker.pid, docker)
    cgroups.move(in_service.pid, service)
    cgroups.move(elsewhere.pid, cgroups.make("plain"))
    port, metrics = free_port(), free_port()
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "-P", str(port),
              "--metrics-labels", "container,unit")
    for w, times in ((in_docker, 2), (in_service, 1), (elsewhere, 3)):
        for _ in range(times):
            w.connect(4, "127.0.0.1", port)
    assert connects_by(scrape(metrics), "container", "unit") == {
        (container_id, f"docker-{container_id}.scope"): 2,
        ("", "nginx.service"): 1,
        ("", ""): 3,
    }
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.host_only
def test_hostile_and_long_label_values_are_escaped_and_cut(trace, workload, cgroups):
    # Anyone who can make a cgroup (or a systemd scope) names it: control
    # characters reach /metrics only escaped, a long name only cut (and
    # counted).
    hostile = cgroups.make("system.slice/evil\x1b]0;pwned\x07\\x1b.service")
    long_unit = "u" * 200 + ".service"
    long = cgroups.make(f"system.slice/{long_unit}")
    in_hostile, in_long = workload(), workload()
    cgroups.move(in_hostile.pid, hostile)
    cgroups.move(in_long.pid, long)
    port, metrics = free_port(), free_port()
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "-P", str(port),
              "--metrics-labels", "unit")
    in_hostile.connect(4, "127.0.0.1", port)
    in_long.connect(4, "127.0.0.1", port)
    text = HTTP.open(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    samples = scrape(metrics)
    t.stop()
    assert not any(c in text for c in "\x1b\x07"), "a control character reached /metrics"
    assert connects_by(samples, "unit") == {
        # The backslash the name itself holds is doubled, so it cannot pass
        # for an escape.
        ("evil\\x1b]0;pwned\\x07\\\\x1b.service",): 1,
        (long_unit[:128],): 1,
    }
    # The long name's count key was drained once (it came once).
    assert samples["tcpconnect_label_values_cut_total"][()] == 1
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.user_space
def test_hostile_process_name_reaches_metrics_escaped(trace, tmp_path):
    # A process names itself: here through the name it is run by.
    hostile = tmp_path / "\x1b[2Jev\\il\x07"
    hostile.symlink_to("/usr/bin/python3")
    port, metrics = free_port(), free_port()
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "--metrics-labels", "comm",
              "-P", str(port))
    connect = f"import socket; socket.socket().connect_ex(('127.0.0.1', {port}))"
    subprocess.run([hostile, "-c", connect], check=True)
    text = HTTP.open(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    t.stop()
    assert not any(c in text for c in "\x1b\x07"), "a control character reached /metrics"
    # Escaped as in the rows, then in Prometheus' text format (\\ for \).
    assert 'tcpconnect_connects_total{comm="\\\\x1b[2Jev\\\\\\\\il\\\\x07"} 1.0' in text.splitlines(), text
    assert (t.returncode, t.stderr) == (0, "")


def test_result_label_counts_each_attempt_when_it_ends(trace):
    refused, metrics = free_port(), free_port()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listening = listener.getsockname()[1]
        t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "--outcome",
                  "-P", f"{refused},{listening}", "--metrics-labels", "dport,result")
        connect_times(4, "127.0.0.1", refused, 2)
        socket.create_connection(("127.0.0.1", listening)).close()
        assert connects_by(scrape(metrics), "dport", "result") == {
            (str(refused), "refused"): 2, (str(listening), "ok"): 1}
        t.stop()
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.parametrize("args,message", [
    (["--metrics", "h:1", "--metrics-labels", "dport,result"],
     "--metrics-labels result needs --outcome (or --failed)"),
    (["--metrics", "h:1", "-q", "-T"], "-T/--time cannot be used with -q/--quiet: there are no rows"),
    (["--metrics", "h:1", "-q", "--container"], "--container cannot be used with -q/--quiet: there are no rows"),
])
@pytest.mark.host_only
def test_labels_and_columns_that_need_another_option(args, message):
    done = run_tool(*args)
    assert done.returncode == 2
    assert done.stderr == f"tcpconnect: error: {message}\n"
