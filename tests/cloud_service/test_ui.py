"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real
``hadmc serve`` (embedded SQLite, in-process worker) on loopback.

What a person sees and clicks is checked against what the REST API answers. Every page is
saved as a screenshot under the test's tmp_path (and in ``$HADMC_UI_SCREENSHOTS`` when
set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.cloud_service.conftest import device_profile, make_onnx

pytest.importorskip("playwright", reason="pip install playwright (the dev extra)")
from playwright.sync_api import BrowserContext, Page, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HADMC = str(Path(sys.executable).parent / "hadmc")
OCTET = {"Content-Type": "application/octet-stream"}
#: Prune and distill are unticked in the form; quantization made quick by the overrides.
QUICK_OVERRIDES = {"quantize": {"keep_ladder": [0], "calib_samples": 32,
                                "sensitivity_samples": 16},
                   "measure": {"runs": 5, "warmup": 2}}
OPERATORS = {"Conv": [0.011, 0.012, 0.013], "Gemm": [0.004, 0.005], "Relu": [0.001]}
#: the whole-model term the agent sends inside its table: [c, k, j], not operator samples
TERM = {"model|fp32": [0.05, 1.1, 0.3]}

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/system_deps.sh "
                "does it)", pytrace=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``hadmc serve`` in ``tmp`` with users carol (operator) and vic (viewer)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HADMC_")}
        self.env.update({"HADMC_DATABASE_URL": f"sqlite:///{tmp / 'hadmc.db'}",
                         "HADMC_ARTIFACT_DIR": str(tmp / "artifacts"),
                         "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key"),
                         "HADMC_ROLLOUT_INTERVAL_SECONDS": "1"})
        assert self.hadmc("db", "upgrade").returncode == 0
        self.operator = self.token("carol")
        self.viewer = self.token("vic", "--role", "viewer")
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen([HADMC, "serve", "--port", str(self.port)], env=self.env,
                                     cwd=tmp, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.stop()
            pytest.fail(f"hadmc serve did not start:\n{self.log.read_text()[-3000:]}")
        self.api = httpx.Client(base_url=self.url, timeout=30,
                                headers={"Authorization": f"Bearer {self.operator}"})

    def hadmc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HADMC, *args], env=self.env, cwd=self.tmp, capture_output=True,
                              text=True, timeout=120)

    def token(self, user: str, *args: str) -> str:
        res = self.hadmc("token", "create", "--user", user, *args)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)

    def enroll(self, name: str, tags: list[str]) -> dict[str, Any]:
        """A device that reported an x86 AVX2 profile, with tags and a credential."""
        tok = self.api.post("/v1/enrollment-tokens", json={"max_uses": 1}).json()["token"]
        reg = self.api.post("/v1/devices/register", json={
            "enrollment_token": tok, "name": name, "profile": device_profile()})
        assert reg.status_code == 201, reg.text
        dev = reg.json()
        assert self.api.patch(f"/v1/devices/{dev['device_id']}",
                              json={"tags": tags}).status_code == 200
        dev["auth"] = {"Authorization": f"Bearer {dev['credential']}"}
        return dev


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    server = Serve(tmp_path_factory.mktemp("ui-serve"))
    try:
        yield server
    finally:
        server.api.close()
        server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium with a fresh profile directory (no other state, no network but loopback)."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
            args=CHROMIUM_ARGS, headless=True, viewport={"width": 1360, "height": 900})
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


class Shots:
    """Full-page screenshots to tmp_path/screenshots (and $HADMC_UI_SCREENSHOTS)."""

    def __init__(self, tmp: Path) -> None:
        self.dirs = [tmp / "screenshots"]
        if os.environ.get("HADMC_UI_SCREENSHOTS"):
            self.dirs.append(Path(os.environ["HADMC_UI_SCREENSHOTS"]))
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []

    def __call__(self, page: Page, name: str) -> None:
        path = self.dirs[0] / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        for d in self.dirs[1:]:
            shutil.copy(path, d / path.name)
        self.taken.append(name)


def login(page: Page, serve: Serve, token: str, path: str = "/ui") -> None:
    page.goto(serve.url + path)
    assert "/ui/login" in page.url
    page.fill("#token", token)
    page.click("button:has-text('Log in')")
    page.wait_for_url(re.compile(re.escape(serve.url + path) + r"$"))


def metric(serve: Serve, name: str, **labels: str) -> float:
    text = serve.api.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{{{want}}} is not in /metrics")


def wait_until(cond: Any, what: str, timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := cond():
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _job_through_the_form(page: Page, serve: Serve, shots: Shots) -> int:
    page.click("a:has-text('New job')")
    page.wait_for_url(serve.url + "/ui/jobs/new")
    page.select_option("#model_id", label=page.locator("#model_id option").nth(1).inner_text())
    page.select_option("#dataset_id", label=page.locator("#dataset_id option").nth(1)
                       .inner_text())
    page.select_option("#profile", "x86-avx2")
    page.fill("#max_accuracy_drop", "5")
    page.uncheck("input[name=prune]")
    page.uncheck("input[name=distill]")
    page.click("summary:has-text('Config overrides')")
    page.fill("textarea[name=config]", json.dumps(QUICK_OVERRIDES))
    shots(page, "job-new")
    page.click("button:has-text('Submit job')")
    page.wait_for_url(re.compile(r".*/ui/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    shots(page, "job-live")
    # The page follows the job by itself (polling) and shows the finished state.
    page.locator("[data-field=state] .badge", has_text="succeeded").wait_for(timeout=150_000)
    return job_id


def test_an_operator_runs_a_job_and_steers_a_rollout(serve: Serve, browser: BrowserContext,
                                                     tiny_weights: Path,
                                                     tmp_path: Path) -> None:
    shots = Shots(tmp_path)
    model = serve.api.post("/v1/models", params={"name": "tiny-densenet", "arch": "densenet",
                                                 "width": 0.5},
                           content=tiny_weights.read_bytes(), headers=OCTET)
    assert model.status_code == 201, model.text
    assert serve.api.post("/v1/datasets", json={"builtin": "digits"}).status_code == 201
    page = browser.new_page()

    # Log in (the jobs page sends us to the form and back).
    page.goto(serve.url + "/ui/jobs")
    assert page.url == serve.url + "/ui/login?next=/ui/jobs"
    shots(page, "login")
    login(page, serve, serve.operator, "/ui/jobs")
    assert page.inner_text("[data-testid=user]") == "carol"

    # A job submitted through the form, followed live until it finishes.
    job_id = _job_through_the_form(page, serve, shots)
    job = serve.api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    assert job["config"]["prune"]["enabled"] is False
    assert job["config"]["quantize"]["keep_ladder"] == [0]
    assert job["config"]["constraints"]["max_accuracy_drop"] == 5
    version_id = job["version_id"]
    assert page.inner_text("[data-field=result]") == f"version {version_id}"
    shots(page, "job")
    page.click("nav >> text=Jobs")
    assert "succeeded" in page.inner_text(f"tr[data-job='{job_id}']")
    shots(page, "jobs")

    # The version's report: plot, candidates and per-layer decisions as the API has them.
    page.click(f"a:has-text('version {version_id}')")
    page.wait_for_url(serve.url + f"/ui/versions/{version_id}")
    report = serve.api.get(f"/v1/versions/{version_id}/report").json()
    plotted = [c for c in report["candidates"] if c.get("val_accuracy") is not None]
    assert page.locator("[data-testid=plot] circle").count() == len(plotted)
    assert page.locator("[data-testid=plot] rect.baseline").count() == 1
    assert page.locator("[data-testid=candidates] tbody tr").count() == \
        len(report["candidates"])
    assert page.locator("[data-testid=layers] tbody tr").count() == len(report["layers"])
    assert "no device has reported it yet" in page.inner_text("[data-testid=measured]")
    # What the job measured a user could run instead, one row each, as the report has them.
    refs = report["references"]
    assert {r["name"] for r in refs["rows"]} == {"onnxruntime-fp32", "openvino-fp32",
                                                 "openvino-nncf-int8"}
    assert page.locator("[data-testid=references] tr[data-reference]").count() == 3
    for r in refs["rows"]:
        cell = page.inner_text(f"tr[data-reference={r['name']}] [data-field=speedup]")
        assert cell.endswith("faster" if r["chosen_speedup"] >= 1 else "slower"), cell
        assert page.inner_text(f"tr[data-reference={r['name']}] th") == r["label"]
    assert "NNCF PTQ INT8 on OpenVINO" in page.inner_text("[data-testid=references]")
    shots(page, "version")

    # Two devices on line-1; a rollout of the version in two waves, from the version page.
    devs = [serve.enroll(f"edge-{i}", ["line-1"]) for i in (1, 2)]
    other = serve.enroll("edge-3", ["line-2"])
    r = serve.api.post(f"/v1/devices/{devs[0]['device_id']}/latency",
                       json={"operators": {**OPERATORS, **TERM}}, headers=devs[0]["auth"])
    assert r.status_code == 200, r.text
    page.click("a:has-text('Roll out')")
    page.wait_for_url(re.compile(r".*/ui/rollouts/new\?version_id=\d+$"))
    assert page.locator("#version_id").input_value() == str(version_id)
    page.check("input[name=selector][value=tags]")
    page.fill("input[name=tags]", "line-1")
    page.fill("#waves", "50")
    page.click("button:has-text('Create rollout')")
    assert "waves must be strictly increasing" in page.inner_text(".alert")
    assert page.locator("input[name=tags]").input_value() == "line-1"  # kept as typed
    assert serve.api.get("/v1/rollouts").json()["count"] == 0
    shots(page, "rollout-new-refused")
    page.fill("#waves", "50, 100")
    shots(page, "rollout-new")
    page.click("button:has-text('Create rollout')")
    page.wait_for_url(re.compile(r".*/ui/rollouts/\d+$"))
    rollout_id = int(page.url.rsplit("/", 1)[1])

    def waves_on_page() -> list[dict[str, int]]:
        out = []
        for row in page.locator("[data-testid=waves] tbody tr").all():
            chips = row.locator(".chip").all()
            out.append({c.get_attribute("data-status") or "": int(c.locator("strong")
                                                                 .inner_text())
                        for c in chips})
        return out

    rest = serve.api.get(f"/v1/rollouts/{rollout_id}").json()
    assert waves_on_page() == rest["wave_counts"] == [{"assigned": 1}, {"pending": 1}]
    assert page.inner_text("[data-testid=creator]") == "carol"
    shots(page, "rollout")

    # Pause and resume with the buttons; the API agrees, and says who did it.
    page.click("button[data-action=pause]")
    page.locator("h1 .badge", has_text="paused").wait_for()
    assert serve.api.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "paused"
    events = serve.api.get(f"/v1/rollouts/{rollout_id}/events").json()["data"]
    assert events[-1]["kind"] == "pause" and events[-1]["details"]["user_name"] == "carol"
    pause_row = page.locator("[data-testid=events] tr[data-kind=pause]")
    assert pause_row.locator("td.by").inner_text() == "carol"
    assert page.locator("button[data-action=resume]").is_visible()
    assert page.locator("button[data-action=pause]").count() == 0
    desired = serve.api.get(f"/v1/devices/{devs[0]['device_id']}/desired",
                            headers=devs[0]["auth"]).json()
    assert desired["hold"] is True
    shots(page, "rollout-paused")
    page.click("button[data-action=resume]")
    page.locator("h1 .badge", has_text="active").wait_for()
    assert serve.api.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "active"
    assert page.locator("[data-testid=events] tr[data-kind=resume] td.by").inner_text() == \
        "carol"

    # The first device commits the version: the scheduler advances to the second wave.
    first = devs[0]
    r = serve.api.post(f"/v1/devices/{first['device_id']}/updates", headers=first["auth"],
                       json={"version_id": version_id, "rollout_id": rollout_id, "ok": True,
                             "phase": "done", "p50_ms": 0.42, "p95_ms": 0.5})
    assert r.status_code == 201, r.text
    wait_until(lambda: serve.api.get(f"/v1/rollouts/{rollout_id}").json()["current_wave"]
               == 1, "the scheduler to start wave 2")
    page.reload()
    rest = serve.api.get(f"/v1/rollouts/{rollout_id}").json()
    assert waves_on_page() == rest["wave_counts"] == [{"succeeded": 1}, {"assigned": 1}]
    shots(page, "rollout-wave-2")
    page.click("nav >> text=Rollouts")
    row = page.locator(f"[data-testid=rollouts] tr[data-rollout='{rollout_id}']")
    assert "active" in row.inner_text() and "2 of 2" in row.inner_text()
    shots(page, "rollouts")

    # The fleet: counts by state as /metrics has them; one device updating, one online.
    page.click("nav >> text=Fleet")
    for state in ("online", "offline", "updating", "failed"):
        assert int(page.inner_text(f"[data-testid=count-{state}]")) == \
            metric(serve, "hadmc_devices", state=state), state
    listed = serve.api.get("/v1/devices").json()
    assert int(page.inner_text("[data-testid=count-total]")) == listed["count"] == 3
    assert page.inner_text(f"tr[data-device='{devs[1]['device_id']}'] .badge") == "updating"
    assert page.inner_text(f"tr[data-device='{first['device_id']}'] .badge") == "online"
    version_row = page.locator(f"[data-testid=matrix] tr[data-version='{version_id}']")
    assert version_row.locator("td.num strong").inner_text() == "1"
    shots(page, "fleet")
    page.fill("#tag", "line-2")
    page.click("button:has-text('Filter')")
    page.wait_for_url(serve.url + "/ui?tag=line-2")
    assert page.inner_text("[data-testid=count-total]") == "1"
    assert page.locator("[data-testid=devices] tbody tr").count() == 1
    assert page.locator(f"tr[data-device='{other['device_id']}']").count() == 1
    shots(page, "fleet-tag")

    # The first device: profile, operator table, update history, the version it serves.
    page.goto(serve.url + f"/ui/devices/{first['device_id']}")
    assert page.locator("[data-testid=operators] tbody tr").count() == len(OPERATORS)
    conv = page.locator("[data-testid=operators] tr", has_text="Conv").inner_text()
    assert "0.0120" in conv and "3" in conv
    term = page.inner_text("[data-testid=whole-model-term] tr[data-precision=fp32]")
    assert "0.0500" in term and "1.10" in term and "0.300" in term, term
    # its version was built for a profile, not from its table: nothing to correct by
    assert "None yet" in page.inner_text("[data-testid=correction]")
    history = page.locator("[data-testid=updates] tbody tr")
    assert history.count() == 1 and "done" in history.inner_text()
    assert f"#{version_id}" in page.inner_text("[data-testid=current-version]")
    assert "x86-avx2" in page.inner_text("[data-testid=profile]")
    shots(page, "device")

    # The version now has a measured latency from the device.
    page.goto(serve.url + f"/ui/versions/{version_id}")
    assert "0.420 ms" in page.inner_text("[data-testid=measured]")
    assert "median p95 0.500 ms" in page.inner_text("[data-testid=measured]")
    # ... beside the report's prediction with its source and the error, as the API has them
    lat = serve.api.get(f"/v1/versions/{version_id}").json()["latency"]
    assert lat["devices"] == 1 and lat["measured_p50_ms"] == 0.42
    assert page.inner_text("[data-testid=device-count]") == "1"
    assert lat["predicted_source"] == report["latency_source"]
    assert page.inner_text("[data-testid=predicted-source]") == "({})".format({
        "measured": "measured on the worker", "estimated": "estimated",
        "device_table": "from the device's latency table"}[report["latency_source"]])
    assert page.inner_text("[data-testid=error]").startswith(f"{lat['error_pct']:+.1f} %")
    shots(page, "version-measured")
    page.click("nav >> text=Versions")
    assert page.locator(f"[data-testid=versions] tr[data-version='{version_id}']").count() == 1
    shots(page, "versions")
    assert {"login", "job", "jobs", "version", "rollout", "rollouts", "fleet", "device",
            "versions", "job-new", "rollout-new"} <= set(shots.taken)


@pytest.fixture(scope="module")
def rollout_id(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A rollout of a published one-MatMul version to a device of its own."""
    onnx = make_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx",
                     np.ones((4, 2), np.float32)).read_bytes()
    model = serve.api.post("/v1/models", params={"name": "matmul", "format": "onnx"},
                           content=onnx, headers=OCTET).json()
    version = serve.api.post(f"/v1/models/{model['id']}/versions",
                             params={"profile": "x86-avx2"}, content=onnx, headers=OCTET)
    assert version.status_code == 201, version.text
    dev = serve.enroll("edge-csrf", ["csrf"])
    r = serve.api.post("/v1/rollouts", json={"version_id": version.json()["id"],
                                             "selector": {"device_ids": [dev["device_id"]]}})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_pages_send_a_visitor_without_a_session_to_the_login_form(serve: Serve,
                                                                  rollout_id: int) -> None:
    with httpx.Client(base_url=serve.url) as anonymous:
        for path in ("/ui", "/ui/jobs", "/ui/jobs/new", "/ui/versions",
                     f"/ui/rollouts/{rollout_id}", "/ui/devices/1"):
            r = anonymous.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/ui/login?next=/ui"), path
        r = anonymous.post(f"/ui/rollouts/{rollout_id}/pause", data={"csrf": "x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert serve.api.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "active"


def test_a_form_posted_without_its_csrf_token_is_refused(serve: Serve, browser: BrowserContext,
                                                         rollout_id: int,
                                                         tmp_path: Path) -> None:
    page = browser.new_page()
    login(page, serve, serve.operator, f"/ui/rollouts/{rollout_id}")
    cookie = next(c for c in browser.cookies() if c["name"] == "hadmc_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert cookie["path"] == "/ui"
    url = serve.url + f"/ui/rollouts/{rollout_id}/pause"
    # The browser's own cookie goes with these requests; only the form field is wrong.
    assert page.request.post(url, form={"other": "1"}).status == 403
    assert page.request.post(url, form={"csrf": "not-the-token"}).status == 403
    assert serve.api.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "active"
    csrf = page.locator("form[action$='/pause'] input[name=csrf]").input_value()
    refused = page.request.post(serve.url + "/ui/logout", form={"csrf": "nope"})
    assert refused.status == 403
    assert page.request.post(url, form={"csrf": csrf}).ok  # the page's own token works
    assert serve.api.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "paused"
    assert serve.api.post(f"/v1/rollouts/{rollout_id}/resume").status_code == 200
    page.goto(url.rsplit("/", 1)[0])
    Shots(tmp_path)(page, "rollout-controls")


def test_a_viewer_reads_but_cannot_steer(serve: Serve, browser: BrowserContext,
                                         rollout_id: int, tmp_path: Path) -> None:
    page = browser.new_page()
    login(page, serve, serve.viewer, f"/ui/rollouts/{rollout_id}")
    assert page.locator(".role").inner_text() == "viewer"
    assert page.locator("button[data-action]").count() == 0
    csrf = page.locator("header form input[name=csrf]").input_value()
    r = page.request.post(serve.url + f"/ui/rollouts/{rollout_id}/pause", form={"csrf": csrf})
    assert r.status == 403
    assert serve.api.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "active"
    page.goto(serve.url + "/ui/jobs/new")
    assert "operator role" in page.inner_text(".alert")
    Shots(tmp_path)(page, "viewer-refused")


def test_the_session_of_a_revoked_token_ends(serve: Serve, browser: BrowserContext) -> None:
    token = serve.token("dave")
    page = browser.new_page()
    login(page, serve, token, "/ui/versions")
    own = {"Authorization": f"Bearer {token}"}
    mine = serve.api.get("/v1/tokens", headers=own).json()["data"][0]
    assert serve.api.delete(f"/v1/tokens/{mine['id']}", headers=own).status_code == 200
    page.reload()
    assert page.url.startswith(serve.url + "/ui/login?next=/ui/versions")
    page.fill("#token", token)  # and the token no longer logs in
    page.click("button:has-text('Log in')")
    assert "revoked" in page.inner_text(".alert")
    assert "/ui/login" in page.url or page.url.endswith("/ui/login")


def test_logout_ends_the_session_and_the_login_form_does_not(serve: Serve,
                                                              browser: BrowserContext) -> None:
    page = browser.new_page()
    login(page, serve, serve.operator, "/ui/jobs")
    page.goto(serve.url + "/ui/login?next=/ui/versions")  # the form does not end a session
    assert page.url == serve.url + "/ui/versions"
    page.click("button:has-text('Log out')")
    page.wait_for_url(serve.url + "/ui/login")
    page.goto(serve.url + "/ui/jobs")
    assert page.url.startswith(serve.url + "/ui/login")


def test_a_device_with_two_models_shows_each(serve: Serve, browser: BrowserContext,
                                             tmp_path: Path) -> None:
    w = np.random.default_rng(4).standard_normal((8, 3)).astype(np.float32)
    vids = {}
    for name, rows in (("detector", 16), ("classifier", 8)):
        data = make_onnx(tmp_path / f"{name}.onnx", np.ones((rows, 3), np.float32) + w[0])
        mid = serve.api.post("/v1/models", params={"name": name, "format": "onnx"},
                             content=data.read_bytes(), headers=OCTET).json()["id"]
        r = serve.api.post(f"/v1/models/{mid}/versions", params={"profile": "x86-avx2"},
                           content=data.read_bytes(), headers=OCTET)
        assert r.status_code == 201, r.text
        vids[name] = (mid, r.json()["id"])
    dev = serve.enroll("two-models", ["pair"])
    me, base = dev["auth"], f"/v1/devices/{dev['device_id']}"
    for mid, vid in vids.values():
        assert serve.api.post(f"{base}/updates", headers=me, json={
            "version_id": vid, "model": f"model-{mid}", "ok": True, "phase": "done"}
                              ).status_code == 201
    assert serve.api.post(f"{base}/heartbeat", headers=me, json={
        "models": [{"model": f"model-{mid}", "version_id": vid} for mid, vid in vids.values()]
    }).status_code == 200

    page = browser.new_page()
    login(page, serve, serve.viewer, f"/ui/devices/{dev['device_id']}")
    for i, (name, (mid, vid)) in enumerate(vids.items()):
        row = page.locator(f"[data-testid=models] tr[data-model='{mid}']")
        assert name in row.inner_text() and ("primary" in row.inner_text()) == (i == 0)
        assert f"#{vid}" in row.locator("[data-field=runs]").inner_text()
    assert f"#{vids['detector'][1]}" in page.inner_text("[data-testid=current-version]")
    Shots(tmp_path)(page, "device-two-models")
    page.goto(serve.url + "/ui?tag=pair")
    runs = page.inner_text(f"tr[data-device='{dev['device_id']}'] [data-field=runs]")
    assert all(f"#{vid}" in runs for _mid, vid in vids.values())
    for _mid, vid in vids.values():
        assert page.locator(f"[data-testid=matrix] tr[data-version='{vid}']").count() == 1


def test_the_version_page_shows_predicted_against_measured(serve: Serve,
                                                            browser: BrowserContext,
                                                            tmp_path: Path) -> None:
    """A version whose report predicted 2.0 ms (estimated for its profile), two devices
    that measured it: the page shows the prediction with its source, the median over the
    devices, their count and the error, as GET /v1/versions/{id} has them."""
    from cloud_service.db import session_scope
    from cloud_service.models import ModelVersion
    from cloud_service.storage import ArtifactStore

    data = make_onnx(tmp_path / "timed.onnx", np.ones((6, 3), np.float32)).read_bytes()
    mid = serve.api.post("/v1/models", params={"name": "timed", "format": "onnx"},
                         content=data, headers=OCTET).json()["id"]
    r = serve.api.post(f"/v1/models/{mid}/versions", params={"profile": "x86-avx2"},
                       content=data, headers=OCTET)
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    report = {"latency_source": "estimated", "latency_model": "roofline",
              "compressed": {"latency_ms": 2.0}}
    digest, _ = ArtifactStore(serve.tmp / "artifacts").put_bytes(json.dumps(report).encode())
    with session_scope(serve.env["HADMC_DATABASE_URL"]) as s:
        s.get(ModelVersion, vid).report_hash = digest   # as a finished job leaves it
    for name, p50, p95 in (("timed-a", 2.4, 2.9), ("timed-b", 2.6, 3.1)):
        dev = serve.enroll(name, [])
        assert serve.api.post(f"/v1/devices/{dev['device_id']}/updates", headers=dev["auth"],
                              json={"version_id": vid, "ok": True, "phase": "done",
                                    "p50_ms": p50, "p95_ms": p95}).status_code == 201
    lat = serve.api.get(f"/v1/versions/{vid}").json()["latency"]
    assert lat["devices"] == 2 and lat["error_pct"] == pytest.approx(-20.0)

    page = browser.new_page()
    login(page, serve, serve.viewer, f"/ui/versions/{vid}")
    assert page.inner_text("[data-testid=predicted]").startswith("2.00 ms")
    assert page.inner_text("[data-testid=predicted-source]") == "(estimated)"
    measured = page.inner_text("[data-testid=measured]")
    assert measured.startswith("2.50 ms") and "median p95 3.00 ms" in measured
    assert page.inner_text("[data-testid=device-count]") == "2"
    assert page.inner_text("[data-testid=error]").startswith("-20.0 %")
    assert page.locator("[data-testid=per-device] tbody tr").count() == 2
    Shots(tmp_path)(page, "version-latency")


def test_the_version_pages_show_what_it_was_built_for_and_the_job_target(
        serve: Serve, browser: BrowserContext, tmp_path: Path) -> None:
    """A version a job built for one device (OpenVINO, its table and whole-model term): the
    version page shows the hardware class, runtime and its version range, the memory, the
    target device (a link to it), what the latency came from and the latency model, beside
    the prediction; the versions list shows what it was built for and the target."""
    from cloud_service.db import session_scope
    from cloud_service.models import ModelVersion
    from cloud_service.storage import ArtifactStore

    dev = serve.enroll("built-for-target", ["bf"])
    did = dev["device_id"]
    data = make_onnx(tmp_path / "built.onnx", np.ones((5, 3), np.float32)).read_bytes()
    mid = serve.api.post("/v1/models", params={"name": "built", "format": "onnx"},
                         content=data, headers=OCTET).json()["id"]
    r = serve.api.post(f"/v1/models/{mid}/versions", params={"profile": "x86-avx2"},
                       content=data, headers=OCTET)
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    target = {"kind": "device", "device_ids": [did], "runtime": "openvino-cpu",
              "profile_of": did, "tables_from": [did], "terms_from": [did],
              "latency": "device_table", "whole_model": "the device's whole-model term",
              "notes": [], "latency_source": "device_table", "backend": "openvino"}
    report = {"latency_source": "device_table", "latency_model": "device-table+whole-model-term",
              "compressed": {"latency_ms": 3.2}, "target": target}
    built = {"isa": "x86_64", "accelerator": "cpu", "flags": ["avx2", "fma"],
             "runtime": "openvino-cpu", "runtimes": ["openvino-cpu"],
             "runtime_version": {"min": "2026.4", "below": "2027"}, "memory_mb": 7}
    digest, _ = ArtifactStore(serve.tmp / "artifacts").put_bytes(json.dumps(report).encode())
    with session_scope(serve.env["HADMC_DATABASE_URL"]) as s:
        row = s.get(ModelVersion, vid)
        row.report_hash, row.built_for = digest, built   # as a finished job leaves them
        row.summary = {**(row.summary or {}), "target": target}
    assert serve.api.get(f"/v1/versions/{vid}").json()["latency"]["predicted_model"] == \
        "device-table+whole-model-term"

    page = browser.new_page()
    login(page, serve, serve.viewer, f"/ui/versions/{vid}")
    card = page.locator("[data-testid=built-for]")
    assert card.locator("[data-field=hardware]").inner_text() == "x86_64 cpu (avx2, fma)"
    assert card.locator("[data-field=runtime]").inner_text() == "openvino-cpu"
    assert card.locator("[data-field=runtime-versions]").inner_text() == ">= 2026.4 < 2027"
    assert card.locator("[data-field=memory]").inner_text() == "7 MiB"
    assert card.locator("[data-field=target]").inner_text() == \
        f"device {did} on openvino-cpu"
    assert card.locator("[data-field=target-latency]").inner_text() == \
        "operator table + whole-model term"
    assert page.inner_text("[data-testid=predicted]").startswith("3.20 ms")
    assert page.inner_text("[data-testid=predicted-model]") == \
        "latency model: device's operator table through its whole-model term"
    Shots(tmp_path)(page, "version-built-for")
    assert card.locator("[data-field=target] a").get_attribute("href") == \
        f"/ui/devices/{did}"

    page.goto(f"{serve.url}/ui/versions")
    row = page.locator(f"[data-testid=versions] tr[data-version='{vid}']")
    assert row.locator("[data-field=built-for]").inner_text() == \
        "x86_64 cpu · openvino-cpu >= 2026.4 < 2027"
    assert row.locator("[data-field=target]").inner_text() == f"device {did}"
    # a published upload records nothing of the kind: matched by its profile
    other = make_onnx(tmp_path / "other.onnx", np.full((5, 3), 2, np.float32)).read_bytes()
    r = serve.api.post(f"/v1/models/{mid}/versions", params={"profile": "x86-avx2"},
                       content=other, headers=OCTET)
    assert r.status_code == 201, r.text
    page.reload()
    row = page.locator(f"[data-testid=versions] tr[data-version='{r.json()['id']}']")
    assert row.locator("[data-field=built-for]").inner_text() == "its profile"
    assert row.locator("[data-field=target]").inner_text() == "profile x86-avx2"
