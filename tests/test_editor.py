"""Open every shipped UI workflow in the active host's real graph editor (headless Chromium).

What a user does with a shared workflow is drag it into the editor; this checks that it
opens there without a missing-nodes dialog or node errors, that every saved widget value
lands on the input it was meant for, and that the editor's own "Queue" conversion
(``app.graphToPrompt``) gives exactly the API file the runner and the other tests run.
A screenshot of each is saved to ``docs/screenshots/`` (current editor) or
``docs/screenshots/2024/`` (the 2024 tree's editor).

Skips, with the reason, when Chromium/chromedriver/selenium are missing (install them
with ``scripts/bootstrap.sh``).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from infinite_id.workflow_io.shipped import PACK_ROOT, SHIPPED, api_path, ui_paths
from infinite_id.workflow_io.ui_to_api import declared_inputs, widget_layout

from comfy_server import comfy_server

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,800",
                "--disable-dev-shm-usage")
MISSING_WORDS = ("missing", "not found", "were not found")

_LOAD_JS = """
const [wf, name, done] = arguments;
(async () => {
  try {
    await app.loadGraphData(wf, true, true, name);  // the current editor names its tab after the 4th argument
    await new Promise(r => setTimeout(r, 300));
    const nodes = app.graph._nodes.map(n => ({
      id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors,
      size: [Math.round(n.size[0]), Math.round(n.size[1])],
      widgets: (n.widgets || []).map(w => [w.name, w.value === undefined ? null : w.value])}));
    const prompt = JSON.parse(JSON.stringify((await app.graphToPrompt()).output));
    const dialogs = [...document.querySelectorAll('.comfy-modal, .p-dialog, [role=dialog]')]
      .filter(e => e.getClientRects().length > 0 && getComputedStyle(e).display !== 'none')
      .map(e => e.innerText.slice(0, 500));
    // Fit the graph into the part of the window no toolbar covers, for the screenshot.
    document.querySelectorAll('.comfy-menu').forEach(e => e.style.display = 'none');  // 2024's floating menu
    let left = 0, top = 0;
    for (const e of document.querySelectorAll('body *')) {
      if (!e.getClientRects().length || getComputedStyle(e).visibility === 'hidden') continue;
      const b = e.getBoundingClientRect();
      if (b.x <= 0 && b.height > 400 && b.width < 150) left = Math.max(left, b.right);
      if (b.y < 60 && b.height < 80 && b.width > 30 && b.bottom > 0) top = Math.max(top, b.bottom);
    }
    const T = 30, m = 12, W = window.innerWidth, H = window.innerHeight;
    const x0 = Math.min(...wf.nodes.map(n => n.pos[0])), y0 = Math.min(...wf.nodes.map(n => n.pos[1])) - T;
    const x1 = Math.max(...wf.nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...wf.nodes.map(n => n.pos[1] + n.size[1]));
    const scale = Math.min(1, (W - left - 2 * m) / (x1 - x0), (H - top - 2 * m) / (y1 - y0));
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset[0] = (left + m) / scale - x0;
    app.canvas.ds.offset[1] = (top + m) / scale - y0;
    app.canvas.show_info = false;
    app.canvas.render_canvas_border = false;
    app.canvas.setDirty(true, true);
    done({nodes, prompt, dialogs, view: {left, top, scale}});
  } catch (e) { done({error: String((e && e.stack) || e)}); }
})();
"""


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    reason = None
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = "selenium is not installed (scripts/bootstrap.sh installs it)"
    if not chromium or not driver:
        reason = "chromium and chromedriver are not installed (scripts/bootstrap.sh installs them as root)"
    if reason:
        print(f"\nSKIP editor tests: {reason}")
        pytest.skip(reason)
    return chromium, driver


def _screenshot_dir(host_path: Path) -> Path:
    """Current editors (served from comfyui-frontend-package) and the 2024 one look different."""
    current = "frontend" in (host_path / "requirements.txt").read_text(errors="ignore") \
        if (host_path / "requirements.txt").is_file() else False
    return PACK_ROOT / "docs" / "screenshots" / ("" if current else "2024")


@pytest.fixture(scope="module")
def editor(host_info, tmp_path_factory):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    base = tmp_path_factory.mktemp("comfyui")
    with comfy_server(host_info.path, base, base / "server.log", _workflow_files()) as url:
        _frontend_or_skip(url)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROME_FLAGS + (f"--user-data-dir={base / 'chromium-profile'}",):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.set_script_timeout(60)
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
            driver.get(url)
            _wait_for_app(driver)
            yield driver
        finally:
            driver.quit()


def _frontend_or_skip(url: str) -> None:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/", timeout=30) as resp:
            page = resp.read(4096).decode("utf-8", "replace")
    except OSError as exc:
        page = str(exc)
    if "<html" not in page.lower():
        reason = f"this host serves no editor at / ({page[:100]!r})"
        print(f"\nSKIP editor tests: {reason}")
        pytest.skip(reason)


def _workflow_files() -> dict[str, bytes]:
    """Placeholder model files and reference photos the workflows name, so no combo is invalid."""
    import io

    from PIL import Image

    from infinite_id.cli.models import LOADER_INPUTS
    from infinite_id.cli.run import demo_photo

    files = {}
    for name in SHIPPED:
        for node in json.loads(api_path(name).read_text()).values():
            for input_name, need in LOADER_INPUTS.get(node["class_type"], {}).items():
                files[f"models/{need.folder}/{node['inputs'][input_name]}"] = b""
            if node["class_type"] == "LoadImage":
                png = io.BytesIO()
                Image.fromarray(demo_photo(node["inputs"]["image"])).save(png, format="PNG")
                files[f"input/{node['inputs']['image']}"] = png.getvalue()
    return files


def _wait_for_app(driver, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return !!(window.app && app.graph && window.LiteGraph && "
                                 "LiteGraph.registered_node_types['InfiniteIDApply'])"):
            time.sleep(1.0)  # let start-up dialogs/extensions settle
            return
        time.sleep(0.5)
    raise AssertionError("the editor did not start (no app.graph with the pack's nodes)")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_opens_in_editor(editor, host_info, name):
    import nodes

    workflow = json.loads(ui_paths(name)[0].read_text())
    api = json.loads(api_path(name).read_text())
    result = editor.execute_async_script(_LOAD_JS, workflow, name)
    assert "error" not in result, result.get("error")
    print(f"\n{name}: open dialogs after load: {result['dialogs']}; screenshot view {result['view']}")
    assert not [d for d in result["dialogs"] if any(w in d.lower() for w in MISSING_WORDS)], result["dialogs"]
    by_id = {int(n["id"]): n for n in result["nodes"]}  # the current editor keeps ids as strings
    assert sorted(by_id) == sorted(n["id"] for n in workflow["nodes"])
    for saved in workflow["nodes"]:
        loaded = by_id[saved["id"]]
        assert loaded["registered"] and not loaded["errors"], f"node {saved['id']} ({saved['type']}): {loaded}"
        layout = widget_layout(nodes.NODE_CLASS_MAPPINGS[saved["type"]])
        input_names = {slot.name for slot in layout if slot.kind == "input"}
        shown = [(w, v) for w, v in loaded["widgets"] if w in input_names]
        expected = [(slot.name, v) for slot, v in zip(layout, saved["widgets_values"]) if slot.kind == "input"]
        assert [w for w, _ in shown] == [w for w, _ in expected], f"node {saved['id']} ({saved['type']})"
        for (widget, value), (_, want) in zip(shown, expected):
            assert _same(value, want), f"node {saved['id']} ({saved['type']}) widget {widget}: {value!r} != {want!r}"
    grown = {n["type"]: by_id[n["id"]]["size"] for n in workflow["nodes"] if by_id[n["id"]]["size"] != n["size"]}
    print(f"{name}: nodes the editor resized: {grown}")
    prompt = result["prompt"]
    assert sorted(prompt, key=int) == sorted(api, key=int)
    for nid, node in api.items():
        got = prompt[nid]
        assert got["class_type"] == node["class_type"]
        declared = {n for n, _ in declared_inputs(nodes.NODE_CLASS_MAPPINGS[node["class_type"]])}
        # The 2024 editor also sends LoadImage's upload button ("upload": "image"); the server ignores
        # inputs a node does not declare, so only declared ones must match.
        assert set(got["inputs"]) & declared == set(node["inputs"]), f"node {nid}"
        for key, want in node["inputs"].items():
            assert _same(got["inputs"][key], want), f"node {nid} input {key}: {got['inputs'][key]!r} != {want!r}"
        if "_meta" in got:
            assert got["_meta"]["title"] == node["_meta"]["title"]
    time.sleep(0.5)
    out = _screenshot_dir(host_info.path) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_small_png(editor.get_screenshot_as_png(), out)
    print(f"{name}: screenshot {out.relative_to(PACK_ROOT)}")


def _save_small_png(png: bytes, path: Path) -> None:
    """Screenshots go into the repository: a 256-colour palette keeps each small."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_editor_cases_queue_as_the_runner_converts_them(editor):
    """Reroute, bypass, mute, Note and a Primitive on a converted widget: the editor's own
    "Queue" and :func:`ui_to_api` send the same prompt (links into muted nodes, which the
    server would refuse, are dropped by the runner and ignored here)."""
    from test_workflow_format import _graph

    from infinite_id.workflow_io.ui_to_api import ui_to_api

    graph = _graph()
    # A saved graph holds the Primitive's value in its target widget too (the 2024 editor reads
    # that one, the current editor the Primitive's; the hand-made graph differs on purpose).
    graph["nodes"][3]["widgets_values"][0] = graph["nodes"][7]["widgets_values"][0]
    graph["extra"] = {"ds": {"scale": 1, "offset": [0, 0]}}
    for i, node in enumerate(graph["nodes"]):
        node.update(pos=[(i % 5) * 320, (i // 5) * 300], size=[300, 200], flags={}, order=i, properties={})
    result = editor.execute_async_script(_LOAD_JS, graph, "editor_cases")
    assert "error" not in result, result.get("error")
    got = result["prompt"]
    for node in got.values():
        node["inputs"] = {k: v for k, v in node["inputs"].items()
                          if not (isinstance(v, list) and len(v) == 2 and v[0] not in got) and k != "upload"}
    want = ui_to_api(graph)
    assert {k: (v["class_type"], v["inputs"]) for k, v in got.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in want.items()}
