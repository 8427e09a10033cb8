"""--web-config: the metrics endpoint over TLS, with client certificates and
with basic authentication, checked with real clients (Python's ssl, and the
real Prometheus server the suite runs) against the running tool; and every
bad file refused in one line."""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from conftest import free_port, refused_connect, run_tool, wait_for
from test_metrics import prometheus  # noqa: F401 (a fixture)

from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.host_only
PASSWORD = "s3cret with spaces:and colons"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate,
    both signed by it; and a client certificate from a CA nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)
    for name, ca, extension in (("server", "ca", "subjectAltName=IP:127.0.0.1"),
                                ("client", "ca", "extendedKeyUsage=clientAuth"),
                                ("stranger", "rogue", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.crt", cwd=d)
    return d


def web_config(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text)
    return path


def hashed(password: str) -> str:
    # Cost 4 keeps the test fast; the tool accepts any cost.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def start(trace, config: Path) -> tuple[object, int, int]:
    port, metrics = free_port(), free_port()
    t = trace("-P", str(port), "-q", "--metrics", f"127.0.0.1:{metrics}",
              "--web-config", str(config))
    refused_connect(4, port)
    return t, port, metrics


def get(metrics: int, scheme: str = "https", context: ssl.SSLContext | None = None,
        password: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{metrics}/metrics")
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def client(pki: Path, cert: str | None = None, maximum: ssl.TLSVersion | None = None,
           ) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    if maximum:
        context.maximum_version = maximum
    return context


def connects(text: str, port: int) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tcpconnect_connects_total" and \
                    sample.labels.get("dport") == str(port):
                return sample.value
    return 0


def test_tls_serves_https_only(trace, pki):
    config = web_config(pki, "tls_server_config:\n  cert_file: server.crt\n"
                             "  key_file: server.key\n")
    t, port, metrics = start(trace, config)
    status, text = get(metrics, context=client(pki))
    with pytest.raises(OSError):
        get(metrics, scheme="http")
    # Still serving after a client that spoke plain HTTP to it.
    assert get(metrics, context=client(pki))[0] == 200
    t.stop()
    assert status == 200 and connects(text, port) == 1
    assert (t.returncode, t.stderr) == (0, "")


def test_minimum_tls_version_is_enforced(trace, pki):
    config = web_config(pki, "tls_server_config:\n  cert_file: server.crt\n"
                             "  key_file: server.key\n  min_version: TLS13\n")
    t, _, metrics = start(trace, config)
    with pytest.raises(urllib.error.URLError, match="PROTOCOL_VERSION"):
        get(metrics, context=client(pki, maximum=ssl.TLSVersion.TLSv1_2))
    assert get(metrics, context=client(pki))[0] == 200
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")


def test_client_certificates_are_required_and_verified(trace, pki):
    config = web_config(pki, "tls_server_config:\n  cert_file: server.crt\n"
                             "  key_file: server.key\n  client_ca_file: ca.crt\n"
                             "  client_auth_type: RequireAndVerifyClientCert\n")
    t, port, metrics = start(trace, config)
    for refused in (None, "stranger"):
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            get(metrics, context=client(pki, refused))
    status, text = get(metrics, context=client(pki, "client"))
    t.stop()
    assert status == 200 and connects(text, port) == 1
    assert (t.returncode, t.stderr) == (0, "")


def test_basic_auth_refuses_wrong_and_missing_passwords(trace, pki):
    config = web_config(pki, f"basic_auth_users:\n  prometheus: '{hashed(PASSWORD)}'\n")
    t, port, metrics = start(trace, config)
    missing = get(metrics, scheme="http")
    wrong = get(metrics, scheme="http", password="not it")
    right = get(metrics, scheme="http", password=PASSWORD)
    # Accepted again from the kept digest, refused again after a wrong one.
    again = get(metrics, scheme="http", password=PASSWORD)
    wrong_again = get(metrics, scheme="http", password=PASSWORD + "x")
    t.stop()
    assert [missing[0], wrong[0], right[0], again[0], wrong_again[0]] == [401, 401, 200, 200, 401]
    assert missing[1] == "Unauthorized\n" and connects(right[1], port) == 1
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.parametrize("auth", ["basic", "certificate"])
def test_real_prometheus_scrapes_over_tls(trace, pki, prometheus, auth):  # noqa: F811
    # Prometheus 2.42's own client, configured as its documentation says.
    tls = {"ca_file": str(pki / "ca.crt")}
    config_text = ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    scrape: dict = {"scheme": "https", "tls_config": tls}
    if auth == "basic":
        config_text += f"basic_auth_users:\n  prometheus: '{hashed(PASSWORD)}'\n"
        scrape["basic_auth"] = {"username": "prometheus", "password": PASSWORD}
    else:
        config_text += ("  client_ca_file: ca.crt\n"
                        "  client_auth_type: RequireAndVerifyClientCert\n")
        tls.update(cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"))
    t, port, metrics = start(trace, web_config(pki, config_text))
    server = prometheus(f"127.0.0.1:{metrics}", **scrape)
    query = f'tcpconnect_connects_total{{dport="{port}"}}'
    wait_for(lambda: server.values(query, "dport"), timeout=30, what="a scrape over TLS")
    assert server.values(query, "dport") == {str(port): 1.0}
    assert server.values("up", "job") == {"tcpconnect": 1.0}
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")


def test_real_prometheus_with_a_wrong_password_is_refused(trace, pki, prometheus):  # noqa: F811
    config = web_config(pki, f"basic_auth_users:\n  prometheus: '{hashed(PASSWORD)}'\n")
    t, _, metrics = start(trace, config)
    server = prometheus(f"127.0.0.1:{metrics}",
                        basic_auth={"username": "prometheus", "password": "guess"})
    wait_for(lambda: server.values("up", "job"), timeout=30, what="a scrape attempt")
    assert server.values("up", "job") == {"tcpconnect": 0.0}
    assert server.values("tcpconnect_connects_total", "dport") == {}
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.parametrize("text,message", [
    ("- a\n- b\n", "the file must be a mapping"),
    ("tls_server_config: [\n", "not YAML: "),
    ("http_server_config:\n  http2: false\n", "http_server_config: not supported by tcpconnect"),
    ("tls_server_config:\n  key_file: server.key\n", "tls_server_config.cert_file is required"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
     "tls_server_config.cipher_suites: not supported by tcpconnect"),
    ("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n",
     "cannot load {pki}/nowhere.crt with {pki}/server.key: No such file or directory"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
     "cannot load {pki}/server.crt with {pki}/client.key: "),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAnyClientCert\n",
     "tls_server_config.client_auth_type 'RequireAnyClientCert': expected one of NoClientCert, "
     "VerifyClientCertIfGiven, RequireAndVerifyClientCert"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  min_version: SSL3\n",
     "tls_server_config.min_version 'SSL3': expected one of TLS10, TLS11, TLS12, TLS13"),
    ("basic_auth_users:\n  prometheus: plaintext\n",
     "basic_auth_users: the password of 'prometheus' must be a bcrypt hash ($2b$...)"),
])
def test_bad_files_are_one_line_exit_2(pki, text, message):
    config = web_config(pki, text)
    done = run_tool("--metrics", "127.0.0.1:1", "-q", "--web-config", str(config))
    assert done.returncode == 2, done
    assert done.stderr.startswith(
        f"tcpconnect: error: --web-config {config}: {message.format(pki=pki)}"), done.stderr
    assert done.stderr.count("\n") == 1


def test_missing_file_and_option_without_metrics_are_one_line_exit_2(tmp_path):
    missing = run_tool("--metrics", "127.0.0.1:1", "--web-config", str(tmp_path / "none.yml"))
    alone = run_tool("--web-config", str(tmp_path / "none.yml"))
    assert (missing.returncode, missing.stderr) == (
        2, f"tcpconnect: error: --web-config {tmp_path / 'none.yml'}: No such file or "
           "directory\n")
    assert (alone.returncode, alone.stderr) == (
        2, "tcpconnect: error: --web-config needs --metrics\n")
