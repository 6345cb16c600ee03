"""tq-gateway from the built .deb on a real systemd: off as installed, socket-activated once enabled, a token's
requests acting as its user through tq-host, hardened, restarted by an upgrade and stopped by removal.

The tests share one container (its own, not test_package.py's) and run in file order. HTTP is spoken by
/usr/bin/python3's urllib inside the container (HTTP_CLIENT below), as a remote caller would.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from nspawn import Container, install_package
from test_package import unit_property, wait_until

pytestmark = pytest.mark.system
PORT = 8790
EXPOSURE_LIMIT = 2.0  # issue 27: at most 2.0 although the gateway serves the network
HTTP_CLIENT = """\
import json, sys, urllib.error, urllib.request
method, url, token = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
request = urllib.request.Request(url, data=body, method=method)
if token:
    request.add_header("Authorization", "Bearer " + token)
if body is not None:
    request.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(request, timeout=60) as reply:
        status, kind, text = reply.status, reply.headers.get_content_type(), reply.read().decode()
except urllib.error.HTTPError as e:
    status, kind, text = e.code, e.headers.get_content_type(), e.read().decode()
print(json.dumps({"status": status, "type": kind, "text": text}))
"""
ACT_AS = """\
import sys
from tq.client import Client
try:
    print(Client().act_as(sys.argv[1])["user"])
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(4)
"""
REFUSED = "ConnectionRefusedError"
PROBE_PORT = f"""\
import socket
try:
    socket.create_connection(("127.0.0.1", {PORT}), timeout=10).close()
    print("open")
except OSError as e:
    print(type(e).__name__)
"""


def http(box: Container, method: str, path: str, token: str = "", body: Any = None) -> tuple[int, Any]:
    """The status and the JSON of a request to the API."""
    reply = http_text(box, method, f"/api/v1{path}", token, body)
    assert reply["type"] == "application/json", reply
    return reply["status"], json.loads(reply["text"])


def http_text(box: Container, method: str, path: str, token: str = "", body: Any = None) -> dict[str, Any]:
    """A request to any path: its status, content type and text."""
    argv = ["python3", "/root/http_client.py", method, f"http://127.0.0.1:{PORT}{path}", token]
    if body is not None:
        argv.append(json.dumps(body))
    reply: dict[str, Any] = json.loads(box.run(argv).stdout)
    return reply


def port(box: Container) -> str:
    return box.run(["python3", "-c", PROBE_PORT]).stdout.strip()


@pytest.fixture(scope="module")
def tq(container: Container) -> Container:
    try:
        box = install_package(container)
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    box.put_text(HTTP_CLIENT, "/root/http_client.py")
    box.run("id alice || useradd --no-create-home --groups tq alice")
    box.run("id mallory || useradd --no-create-home --groups tq mallory")  # reaches tq-host; no gateway
    return box


@pytest.fixture(scope="module")
def token(tq: Container) -> str:
    """A token for alice (a member of group tq, neither root nor an admin)."""
    made = tq.run(["tqctl", "token", "create", "alice-ci", "--user", "alice"]).stdout.strip()
    assert made.startswith("tq_") and "\n" not in made, made
    return made


def test_the_gateway_is_installed_off_neither_enabled_nor_listening(tq: Container) -> None:
    assert tq.run("systemctl is-enabled tq-gateway.socket", check=False).stdout.strip() == "disabled"
    assert tq.run("systemctl is-active tq-gateway.socket tq-gateway.service",
                  check=False).stdout.split() == ["inactive"] * 2
    assert port(tq) == REFUSED
    assert tq.run("id -nG tq-gateway").stdout.split() == ["tq-gateway", "tq"]


def test_installed_gateway_units_verify_clean_and_name_its_man_page(tq: Container) -> None:
    result = tq.run("systemd-analyze verify --man=no tq-gateway.socket tq-gateway.service")
    assert result.stdout == "" and result.stderr == ""
    for unit in ("tq-gateway.socket", "tq-gateway.service"):
        assert "man:tq-gateway(8)" in unit_property(tq, unit, "Documentation")
    tq.run(["test", "-s", "/usr/share/man/man8/tq-gateway.8.gz"])


def test_gateway_service_exposure_is_at_most_2(tq: Container) -> None:
    report = tq.run(["systemd-analyze", "security", "--no-pager", "tq-gateway.service"]).stdout
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", report)
    assert found, report
    print(f"tq-gateway.service: exposure {found.group(1)}")
    assert float(found.group(1)) <= EXPOSURE_LIMIT, report


def test_enabled_socket_starts_the_gateway_as_tq_gateway_at_the_first_request(tq: Container, token: str) -> None:
    tq.run("systemctl enable --now tq-gateway.socket")
    assert tq.run("systemctl is-enabled tq-gateway.socket").stdout.strip() == "enabled"
    assert unit_property(tq, "tq-gateway.service", "ActiveState") == "inactive"
    status, body = http(tq, "GET", "/status", token)
    assert status == 200 and "states" in body, (status, body)
    assert unit_property(tq, "tq-gateway.service", "ActiveState") == "active"
    pid = unit_property(tq, "tq-gateway.service", "MainPID")
    assert tq.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "tq-gateway"
    # Type=notify: READY=1 and STATUS= came from the gateway itself; the watchdog is armed
    assert unit_property(tq, "tq-gateway.service", "StatusText")
    assert unit_property(tq, "tq-gateway.service", "WatchdogUSec") == "30s"


def test_no_or_an_unknown_token_is_answered_401(tq: Container, token: str) -> None:
    assert http(tq, "GET", "/status")[0] == 401
    status, body = http(tq, "GET", "/status", "tq_not-a-token")
    assert status == 401 and body["error"]["code"] == "unauthorized", body


def test_a_job_submitted_through_the_gateway_is_the_token_users_and_is_done(tq: Container, token: str) -> None:
    status, body = http(tq, "POST", "/jobs", token, {"task": "task-1", "args": ["via-gateway"]})
    assert status == 201 and len(body["ids"]) == 1, (status, body)
    job_id = body["ids"][0]
    status, body = http(tq, "GET", f"/jobs/{job_id}?wait=30s", token)
    assert status == 200 and body["job"]["state"] == "done", body
    assert body["job"]["result"] == "task-1 via-gateway processed"
    shown = json.loads(tq.run(["tqctl", "show", str(job_id), "--json"]).stdout)
    assert shown["submitter"] == int(tq.run("id -u alice").stdout)  # acted as alice, not as tq-gateway


def test_the_dashboard_and_its_files_come_with_the_package(tq: Container, token: str) -> None:
    if tq.run("ls -d /usr/lib/tq/lib/python3*/site-packages/tq/gateway/static", check=False).returncode != 0:
        pytest.skip("the dashboard is not in this package yet: branch `dash` (issue 27, item 5) adds it")
    page = http_text(tq, "GET", "/", token)
    assert (page["status"], page["type"]) == (200, "text/html") and "/static/app.js" in page["text"], page
    for name in ("app.js", "style.css"):
        asset = http_text(tq, "GET", f"/static/{name}", token)
        assert asset["status"] == 200 and asset["text"], (name, asset["status"])


def test_tqctl_url_with_a_token_file_reads_status_through_the_gateway(tq: Container, token: str) -> None:
    if "--url" not in tq.run("tqctl --help").stdout:
        pytest.skip("tqctl --url is not in this package yet: branch `remote` (issue 27, item 4) adds it")
    tq.run(f"umask 077 && printf '%s\\n' {token} > /root/alice.token")
    remote = tq.run(["tqctl", "--url", f"http://127.0.0.1:{PORT}", "--token-file", "/root/alice.token",
                     "status", "--json"])
    assert json.loads(remote.stdout)["states"] == json.loads(tq.run("tqctl status --json").stdout)["states"]


def test_act_as_is_accepted_from_tq_gateway_and_refused_from_a_user_not_in_access_gateways(
        tq: Container, token: str) -> None:
    accepted = tq.run(["/usr/lib/tq/bin/python", "-c", ACT_AS, token], user="tq-gateway", check=False)
    assert (accepted.returncode, accepted.stdout) == (0, "alice\n"), accepted
    refused = tq.run(["/usr/lib/tq/bin/python", "-c", ACT_AS, token], user="mallory", check=False)
    assert refused.returncode == 4 and "may not act for others" in refused.stdout, refused


def test_a_revoked_token_is_refused_from_then_on(tq: Container, token: str) -> None:
    doomed = tq.run(["tqctl", "token", "create", "doomed", "--user", "alice"]).stdout.strip()
    assert http(tq, "GET", "/status", doomed)[0] == 200
    tq.run("tqctl token revoke doomed")
    assert http(tq, "GET", "/status", doomed)[0] == 401
    assert http(tq, "GET", "/status", token)[0] == 200


def test_reload_rereads_the_configuration_and_the_gateway_serves_on(tq: Container, token: str) -> None:
    pid = unit_property(tq, "tq-gateway.service", "MainPID")
    since = tq.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    tq.run("systemctl reload tq-gateway.service")
    log = tq.run(["journalctl", "-u", "tq-gateway", "--since", since, "-o", "cat", "--no-pager"]).stdout
    assert "configuration reloaded" in log, log
    assert unit_property(tq, "tq-gateway.service", "MainPID") == pid
    assert http(tq, "GET", "/status", token)[0] == 200


def seconds_active(box: Container, unit: str) -> float:
    entered = int(unit_property(box, unit, "ActiveEnterTimestampMonotonic"))
    return float(box.run("cut -d' ' -f1 /proc/uptime").stdout) - entered / 1e6


def test_the_watchdog_keeps_a_live_gateway_and_restarts_a_hung_one(tq: Container, token: str) -> None:
    """WatchdogSec=30s: past 30 s the gateway still runs (its WATCHDOG=1 pings arrive); stopped with SIGSTOP, it
    is killed and restarted, and the socket, which never closed, serves again."""
    http(tq, "GET", "/status", token)
    pid = unit_property(tq, "tq-gateway.service", "MainPID")
    restarts = int(unit_property(tq, "tq-gateway.service", "NRestarts"))
    wait_until(lambda: seconds_active(tq, "tq-gateway.service") > 35, 60, "the gateway 35 s up")
    assert (unit_property(tq, "tq-gateway.service", "MainPID"), pid) == (pid, pid)
    tq.run(["systemctl", "kill", "-s", "STOP", "--kill-whom=main", "tq-gateway.service"])
    wait_until(lambda: int(unit_property(tq, "tq-gateway.service", "NRestarts")) > restarts, 90,
               "tq-gateway killed by the watchdog and restarted")
    log = tq.run(["journalctl", "-u", "tq-gateway", "-o", "cat", "--no-pager"]).stdout
    assert "Watchdog timeout" in log, log
    assert http(tq, "GET", "/status", token)[0] == 200
    assert unit_property(tq, "tq-gateway.service", "MainPID") not in ("0", pid)


def test_an_upgrade_restarts_a_running_gateway(tq: Container, token: str) -> None:
    http(tq, "GET", "/status", token)  # the service runs
    before = unit_property(tq, "tq-gateway.service", "MainPID")
    deb = tq.run("ls /root/tq_*.deb").stdout.split()[-1]
    tq.run(["apt-get", "install", "-y", "--reinstall", deb], timeout=300)
    wait_until(lambda: unit_property(tq, "tq-gateway.service", "MainPID") not in ("0", before), 30,
               "tq-gateway restarted")
    assert tq.run("systemctl is-enabled tq-gateway.socket").stdout.strip() == "enabled"
    assert http(tq, "GET", "/status", token)[0] == 200


def test_remove_stops_the_gateway_and_closes_its_port_and_purge_forgets_it_was_enabled(tq: Container) -> None:
    wants = "/etc/systemd/system/sockets.target.wants/tq-gateway.socket"
    tq.run(["test", "-L", wants])
    tq.run("apt-get remove -y tq", timeout=300)
    assert tq.run("systemctl is-active tq-gateway.socket tq-gateway.service",
                  check=False).stdout.split() == ["inactive"] * 2
    assert port(tq) == REFUSED
    tq.run("apt-get purge -y tq", timeout=300)
    assert tq.run(["test", "-e", wants], check=False).returncode != 0
    assert tq.run("id -nG tq-gateway").stdout.split() == ["tq-gateway", "tq"]  # system users stay, as Debian does
