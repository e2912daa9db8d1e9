"""The lab's web page in a real browser (Chromium via Playwright): submit a job from the page,
watch its progress move, see the table, the 3D view and the plot, download a CIF and an extxyz
file that pymatgen and ASE read; 422 messages next to their fields; /docs and /redoc offline."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pymatgen.core import Structure

from .conftest import Offsite, Server

pytestmark = pytest.mark.slow

# A small substitution job, slowed down per batch so that its progress can be watched.
JOB_PARAMS = {"datasets": "perov5", "max_references": "500", "batch_size": "4"}
N_CANDIDATES = 12


def _login(page: Any, server: Server) -> None:
    page.goto(server.url + "/")
    page.fill("#apikey", server.key)
    page.locator("#apikey").blur()  # the change event
    page.wait_for_selector("#params label[data-field='params.batch_size']")


def _fill_job(page: Any, step_delay: float, n: int = N_CANDIDATES) -> None:
    page.select_option("#method", "substitution")
    page.fill("#num_candidates", str(n))
    page.fill("#max_atoms", "10")
    page.fill("#allowed", "Ba, Sr, Ca, Ti, Zr, O, S")
    for name, value in {**JOB_PARAMS, "step_delay_s": str(step_delay)}.items():
        page.fill(f"[data-param='{name}']", value)


def _bar(page: Any, job_id: str) -> dict[str, Any] | None:
    return page.evaluate(
        """(id) => { const b = document.querySelector(`#jobs .bar[data-job="${id}"]`);
           return b && { ...b.dataset, width: b.querySelector('.fill').style.width }; }""",
        job_id,
    )


def _non_blank(png: bytes) -> float:
    """Fraction of pixels that are not the white background."""
    img = Image.open(io.BytesIO(png))
    hist = img.convert("L").histogram()
    return 1 - sum(hist[240:]) / sum(hist)


def test_submit_watch_and_explore_results(
    page: tuple[Any, Offsite], server: Server, screenshots: Path, tmp_path: Path
) -> None:
    pg, offsite = page
    _login(pg, server)
    # The key stays in this tab's session storage only.
    assert pg.evaluate("sessionStorage.getItem('matdesign.apikey')") == server.key
    assert pg.evaluate("localStorage.getItem('matdesign.apikey')") is None

    # The catalogue (methods, oracles) loaded with the key: units in the property choices.
    pg.wait_for_function(
        "() => document.querySelector('#objectives select.prop').selectedOptions[0].text"
        " === 'band_gap (eV)'"
    )
    _fill_job(pg, step_delay=1.5)
    body = pg.input_value("#body")
    assert '"step_delay_s": 1.5' in body and '"datasets": [\n      "perov5"' in body
    pg.click("#submit")
    pg.wait_for_selector("#submitmsg.ok")
    job_id = pg.inner_text("#submitmsg").split()[-1]

    # Progress arrives over the event stream: record what the bar shows until the job ends.
    seen: list[dict[str, Any]] = []
    mid_shot = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        bar = _bar(pg, job_id)
        if bar and (not seen or bar != seen[-1]):
            seen.append(bar)
            step, total = int(bar["step"]), int(bar["total"])
            if bar["status"] == "running" and 0 < step < total and not mid_shot:
                pg.locator("#jobs").scroll_into_view_if_needed()
                pg.screenshot(path=str(screenshots / "progress_mid_job.png"))
                mid_shot = True
                # The stored candidates reach the table, plot and 3D view while the job still
                # runs (the next batch is at least step_delay_s away).
                pg.wait_for_selector("#structures tr", timeout=10_000)
                pg.wait_for_selector("#plot svg g.point")
                assert pg.get_attribute(f"#jobs .bar[data-job='{job_id}']", "data-status") == (
                    "running"
                )
                pg.locator("#results").scroll_into_view_if_needed()
                pg.screenshot(path=str(screenshots / "results_mid_job.png"))
        if bar and bar["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert seen and seen[-1]["status"] == "succeeded", seen
    running = {(b["phase"], int(b["step"])) for b in seen if b["status"] == "running"}
    assert len(running) >= 3, f"progress did not move while running: {seen}"
    assert mid_shot, f"no state with 0 < step < total while running: {seen}"
    assert seen[-1]["width"] == "100%"

    # Results: table rows, one per candidate, and summary cards.
    pg.wait_for_function(
        "n => document.querySelectorAll('#structures tr').length === n", arg=N_CANDIDATES
    )
    pg.wait_for_selector(".card[data-key='hit_rate']")
    n_cards = int(pg.inner_text(".card[data-key='n_candidates'] .v"))
    assert n_cards == N_CANDIDATES
    assert "%" in pg.inner_text(".card[data-key='hit_rate'] .v")
    headers = pg.locator("#shead th").all_inner_texts()
    assert any("band gap (eV)" in h for h in headers), headers
    assert any("formation energy (eV/atom)" in h for h in headers), headers

    # Plot: one mark per candidate, both objectives' regions shaded.
    n_points = pg.locator("#plot svg g.point").count()
    assert n_points == N_CANDIDATES
    assert pg.locator("#plot svg rect.band").count() == 2
    n_hits = pg.locator("#structures .badge.hit").count()
    assert pg.locator("#plot svg .hit-ring").count() == n_hits

    # 3D view: a WebGL canvas with a crystal drawn on it.
    pg.wait_for_selector("#viewer canvas")
    pg.wait_for_timeout(500)
    viewer_png = pg.locator("#viewer").screenshot(path=str(screenshots / "viewer_3d.png"))
    assert _non_blank(viewer_png) > 0.01
    # relax was off: only the proposed geometry can be shown.
    assert pg.is_disabled("input[name='geometry'][value='relaxed']")
    pg.locator("#results").screenshot(path=str(screenshots / "results_view.png"))
    pg.screenshot(path=str(screenshots / "page_full.png"), full_page=True)

    # Picking the third row shows that crystal.
    third = pg.locator("#structures tr").nth(2)
    third_id = third.get_attribute("data-id")
    third.locator("td").nth(1).click()
    pg.wait_for_function(
        "id => document.getElementById('viewer').dataset.structure === id", arg=third_id
    )

    # Sort by formula, then filter to hits.
    pg.click("#shead th[data-sort='formula']")
    formulas = pg.locator("#structures tr td:nth-child(2)").all_inner_texts()
    assert formulas == sorted(formulas)
    pg.check("#only-hits")
    assert pg.locator("#structures tr").count() == n_hits
    assert pg.locator("#plot svg g.point").count() == n_hits
    pg.uncheck("#only-hits")

    # Downloads: a CIF that pymatgen parses, the extxyz that ASE reads.
    first = pg.locator("#structures tr").first
    formula = first.locator("td").nth(1).inner_text()
    with pg.expect_download() as dl:
        first.locator("button[data-cif]").click()
    cif_path = tmp_path / "one.cif"
    dl.value.save_as(cif_path)
    structure = Structure.from_file(cif_path)
    assert structure.composition.reduced_formula == formula

    with pg.expect_download() as dl:
        pg.click("button[data-download='extxyz']")
    xyz_path = tmp_path / "job.extxyz"
    dl.value.save_as(xyz_path)
    from ase.io import read

    frames = read(xyz_path, index=":", format="extxyz")
    assert len(frames) == N_CANDIDATES
    assert all("band_gap_eV" in f.info for f in frames)

    assert offsite.urls == [], f"the page tried to leave the server: {offsite.urls}"


def test_field_errors_resubmit_and_cancel(
    page: tuple[Any, Offsite], server: Server, screenshots: Path
) -> None:
    pg, offsite = page
    _login(pg, server)
    # A job to re-submit: a slow one, cancelled from the page.
    _fill_job(pg, step_delay=3.0, n=8)
    pg.click("#submit")
    pg.wait_for_selector("#submitmsg.ok")
    job_id = pg.inner_text("#submitmsg").split()[-1]
    pg.wait_for_selector(f"#jobs button[data-cancel='{job_id}']")
    pg.click(f"#jobs button[data-cancel='{job_id}']")
    pg.wait_for_function(
        """id => { const b = document.querySelector(`#jobs .bar[data-job="${id}"]`);
           return b && b.dataset.status === 'cancelled'; }""",
        arg=job_id,
        timeout=60_000,
    )

    # Edit & re-submit fills the form from the stored request.
    pg.click(f"#jobs button[data-edit='{job_id}']")
    assert pg.input_value("#num_candidates") == "8"
    assert pg.input_value("#allowed") == "Ba, Sr, Ca, Ti, Zr, O, S"
    assert pg.input_value("[data-param='step_delay_s']") == "3"
    # Bad values: the server's 422 messages land next to the fields they name.
    n_jobs = pg.locator("#jobs tr").count()
    pg.fill("#num_candidates", "0")
    pg.fill("#allowed", "Ba, Xx, O")
    pg.click("#submit")
    pg.wait_for_selector("#submitmsg.err")
    for field in ("num_candidates", "constraints.elements.allowed"):
        msg = pg.inner_text(f"#form [data-field='{field}'] .fielderr")
        assert msg.strip(), f"no message next to {field}"
    assert "Xx" in pg.inner_text("#form [data-field='constraints.elements.allowed'] .fielderr")
    pg.locator("#submit-section").screenshot(path=str(screenshots / "form_errors.png"))
    # The method's own parameters are checked next (after the request itself is valid).
    pg.fill("#num_candidates", "8")
    pg.fill("#allowed", "Ba, Ti, O")
    pg.fill("[data-param='batch_size']", "0")
    pg.click("#submit")
    pg.wait_for_function(
        "() => document.querySelector(\"[data-field='params.batch_size'] .fielderr\").textContent"
    )
    assert pg.inner_text("#form [data-field='num_candidates'] .fielderr") == ""
    assert pg.locator("#jobs tr").count() == n_jobs  # nothing was submitted
    assert offsite.urls == []


def _finished_job(server: Server, label: str) -> str:
    """A finished job with this label: cancelled before it gets far, or done already (a job
    whose method finds no parent ends in a fraction of a second, before the cancel lands)."""
    headers = {"X-API-Key": server.key}
    request = {
        "method": "substitution",
        "constraints": {"elements": {"allowed": ["Ba", "Ti", "O"]}, "max_atoms": 5},
        "num_candidates": 4,
        "label": label,
        "params": {"datasets": ["perov5"], "max_references": 50, "step_delay_s": 2.0},
    }
    # The first request of a cold server loads the method's tables: allow for that.
    job = httpx.post(f"{server.url}/v1/jobs", json=request, headers=headers, timeout=120).json()
    httpx.delete(f"{server.url}/v1/jobs/{job['id']}", headers=headers, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/v1/jobs/{job['id']}", headers=headers).json()
        if state["status"] in ("cancelled", "succeeded", "failed"):
            return str(job["id"])
        time.sleep(0.3)
    raise AssertionError(f"job not finished: {state}")


def test_labels_filter_and_delete_from_the_page(
    page: tuple[Any, Offsite], server: Server, screenshots: Path
) -> None:
    pg, offsite = page
    label = f"Perovskite screen {time.monotonic_ns() % 100000}"
    keep = _finished_job(server, "another screen")
    gone = _finished_job(server, label)
    _login(pg, server)
    # The form starts from the server's defaults (embedded CPU server: 8, no relaxation, no
    # over-generation) and sends the label typed into it.
    pg.wait_for_selector("#form[data-defaults='server']")
    assert pg.input_value("#num_candidates") == "8"
    assert not pg.is_checked("#relax")
    assert pg.input_value("#oversample") == "1"
    pg.fill("#oversample", "4")
    assert '"oversample": 4' in pg.input_value("#body")
    pg.fill("#label", "typed label")
    assert '"label": "typed label"' in pg.input_value("#body")

    pg.fill("#label-filter", label)
    pg.wait_for_function(
        "label => { const rows = document.querySelectorAll('#jobs tr');"
        " return rows.length === 1 && rows[0].querySelector('td.label').textContent === label; }",
        arg=label,
    )
    assert pg.inner_text("#jobs td.label") == label
    assert pg.locator(f"#jobs tr[data-id='{keep}']").count() == 0
    pg.locator("section:has(#jobs)").screenshot(path=str(screenshots / "jobs_label_filter.png"))

    pg.once("dialog", lambda dialog: dialog.accept())
    pg.click(f"#jobs button[data-purge='{gone}']")
    pg.wait_for_selector(f"#jobs tr[data-id='{gone}']", state="detached")
    headers = {"X-API-Key": server.key}
    assert httpx.get(f"{server.url}/v1/jobs/{gone}", headers=headers).status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/{keep}", headers=headers).status_code == 200
    assert offsite.urls == []


@pytest.mark.parametrize(
    ("path", "ready"),
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "redoc-wrap h1, .api-info h1")],
)
def test_api_docs_render_offline(
    page: tuple[Any, Offsite], server: Server, screenshots: Path, path: str, ready: str
) -> None:
    pg, offsite = page
    pg.goto(server.url + path)
    pg.wait_for_selector(ready, timeout=30_000)
    assert "matdesign" in pg.inner_text(ready.split(",")[0] if path == "/docs" else "body")
    if path == "/docs":
        pg.wait_for_selector(".opblock-summary-path[data-path='/v1/jobs/{job_id}/events']")
        # The operations list: one block per operation of the schema, methods and paths alike.
        schema = httpx.get(server.url + "/openapi.json").json()
        operations = sorted(
            (verb.upper(), route) for route, ops in schema["paths"].items() for verb in ops
        )
        shown = pg.eval_on_selector_all(
            ".opblock .opblock-summary",
            """els => els.map(e => [e.querySelector('.opblock-summary-method').textContent,
                                    e.querySelector('.opblock-summary-path').dataset.path])""",
        )
        assert sorted(map(tuple, shown)) == operations
    pg.screenshot(path=str(screenshots / f"api{path.replace('/', '_')}.png"))
    assert offsite.urls == [], f"{path} tried to load {offsite.urls}"


def test_relaxed_and_proposed_geometry_toggle(
    page: tuple[Any, Offsite], server: Server, screenshots: Path
) -> None:
    """A job with relax on: the 3D view switches between the proposed and relaxed crystal."""

    request = {
        "method": "substitution",
        "objectives": [{"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.5}],
        "constraints": {"elements": {"allowed": ["Ba", "Sr", "Ti", "O", "S"]}, "max_atoms": 10},
        "num_candidates": 2,
        "relax": True,
        "params": {"datasets": ["perov5"], "max_references": 300},
    }
    headers = {"X-API-Key": server.key}
    job = httpx.post(f"{server.url}/v1/jobs", json=request, headers=headers).json()
    # Let the job finish first: while it runs, new events re-render the view and may
    # select another candidate under the pointer.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/v1/jobs/{job['id']}", headers=headers).json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert state["status"] == "succeeded", state
    pg, offsite = page
    _login(pg, server)
    pg.wait_for_selector(f"#jobs button[data-view='{job['id']}']")
    pg.click(f"#jobs button[data-view='{job['id']}']")
    pg.wait_for_function(
        "() => !document.querySelector(\"input[name='geometry'][value='relaxed']\").disabled",
        timeout=120_000,
    )
    pg.check("input[name='geometry'][value='relaxed']")
    pg.wait_for_function(
        "() => document.getElementById('viewer').dataset.geometry === 'relaxed'", timeout=120_000
    )
    assert "(relaxed)" in pg.inner_text("#viewer-title")
    pg.locator(".views").screenshot(path=str(screenshots / "viewer_relaxed.png"))
    pg.check("input[name='geometry'][value='proposed']")
    pg.wait_for_function(
        "() => document.getElementById('viewer').dataset.geometry === 'proposed'", timeout=120_000
    )
    assert offsite.urls == []
