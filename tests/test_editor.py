"""Open every shipped UI workflow in the active host's real graph editor (headless Chromium).

What a user does with a shared workflow is drag it into the editor; this checks that it
opens there without a missing-nodes dialog or node errors, that every saved widget value
lands on the input it was meant for, and that the editor's own "Queue" conversion
(``app.graphToPrompt``) gives exactly the API file the runner and the other tests run.
A screenshot of each is saved to ``docs/screenshots/`` (current editor) or
``docs/screenshots/2024/`` (the 2024 tree's editor).

On a current host the editor runs twice: the frontend the host pins
(``comfyui-frontend-package``) and a newer one (``--front-end-root`` to the folder
``scripts/bootstrap.sh`` installs, ``.venv/frontend-<version>``). There the template
browser must list each shipped workflow once with its thumbnail, the missing-models panel
must name the folder of every missing file, and the adapter dropdown must hold adapters
only; the pack's link colours must survive the colour palette on every editor.

Skips, with the reason, when Chromium/chromedriver/selenium are missing (install them
with ``scripts/bootstrap.sh``).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from comfy_server import PACK_NAME, comfy_server

from infinite_id.workflow_io.shipped import PACK_ROOT, SHIPPED, api_path, thumbnail_path, ui_paths
from infinite_id.workflow_io.ui_to_api import declared_inputs, ui_to_api, widget_layout

# The newer editor tested beside the host's pinned one (scripts/bootstrap.sh installs it).
NEWER_FRONTEND = "1.58.1"
NEWER_FRONTEND_ROOT = Path(sys.prefix) / f"frontend-{NEWER_FRONTEND}" / "comfyui_frontend_package" / "static"
TYPE_COLOURS = {"INFINITEID_IDENTITY": "#E8A33D", "INFINITEID_ADAPTER": "#B07CE8", "FACEANALYSIS": "#3CB4A0"}
OLD_WORKFLOW = Path(__file__).parent / "data" / "identity_mixing_v0.2.0.json"

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


def _is_current_host(host_path: Path) -> bool:
    """Current hosts serve the editor from comfyui-frontend-package; the 2024 tree has its own."""
    return "frontend" in (host_path / "requirements.txt").read_text(errors="ignore") \
        if (host_path / "requirements.txt").is_file() else False


def _screenshot_dir(host_path: Path, frontend: str = "pinned") -> Path:
    """Current editors (served from comfyui-frontend-package) and the 2024 one look different."""
    if frontend != "pinned":
        return PACK_ROOT / "docs" / "screenshots" / f"frontend-{frontend}"
    return PACK_ROOT / "docs" / "screenshots" / ("" if _is_current_host(host_path) else "2024")


@pytest.fixture(scope="module", params=["pinned", NEWER_FRONTEND])
def frontend(request, host_info):
    """Which editor: the host's own, or the newer frontend (current hosts only)."""
    if request.param != "pinned":
        if not _is_current_host(host_info.path):
            pytest.skip("the 2024 tree serves its own editor; newer frontends need a current host")
        if not (NEWER_FRONTEND_ROOT / "index.html").is_file():
            pytest.skip(f"frontend {request.param} is not installed at {NEWER_FRONTEND_ROOT} (scripts/bootstrap.sh)")
    return request.param


@pytest.fixture(scope="module")
def server_base(tmp_path_factory, frontend):
    return tmp_path_factory.mktemp(f"comfyui-{frontend}")


@contextlib.contextmanager
def editor_session(host_path, base, frontend: str, script_timeout: int, on_new_document: str | None = None):
    """A real server for ``frontend`` and headless Chromium on its editor: ``(driver, url)``.

    ``on_new_document``: a script run before the page's own (e.g. a console hook)."""
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    extra = ["--front-end-root", str(NEWER_FRONTEND_ROOT)] if frontend != "pinned" else []
    with comfy_server(host_path, base, base / "server.log", _workflow_files(), extra_args=extra) as url:
        _frontend_or_skip(url)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROME_FLAGS + (f"--user-data-dir={base / 'chromium-profile'}",):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.set_script_timeout(script_timeout)
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
            if on_new_document:
                driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": on_new_document})
            driver.get(url)
            _wait_for_app(driver)
            yield driver, url
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def editor(host_info, server_base, frontend):
    with editor_session(host_info.path, server_base, frontend, script_timeout=60) as (driver, _):
        yield driver


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

    from infinite_id.cli.run_workflow import demo_photo
    from infinite_id.host.models import LOADER_INPUTS

    # A saved identity: the adapter dropdown must not list it.
    files = {"models/infiniteid/identities/alice.safetensors": b""}
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
def test_workflow_opens_in_editor(editor, host_info, frontend, name):
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
    if frontend != "pinned":
        return  # the README shows the pinned editor's screenshots
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


_TEMPLATES_JS = """
const [module, names, done] = arguments;
(async () => {
  try {
    const response = await fetch('/api/workflow_templates');
    const listed = response.ok ? await response.json() : null;
    if (listed === null) { done({listed}); return; }
    const thumbs = {};
    for (const n of names) {
      const r = await fetch(`/api/workflow_templates/${module}/${n}.jpg`);
      thumbs[n] = [r.status, r.headers.get('content-type')];
    }
    let cards = null;
    if (app.extensionManager && app.extensionManager.command) {
      await app.extensionManager.command.execute('Comfy.BrowseTemplates');
      await new Promise(r => setTimeout(r, 2000));
      const entry = [...document.querySelectorAll('[role=dialog] *')]
        .find(e => e.children.length === 0 && (e.innerText || '').trim() === module);
      if (entry) { entry.click(); await new Promise(r => setTimeout(r, 2500)); }
      // Cards below the fold load their images lazily: bring each into view once.
      for (const img of document.querySelectorAll('[role=dialog] img')) {
        img.scrollIntoView({block: 'center'});
        await new Promise(r => setTimeout(r, 400));
      }
      const dialog = document.querySelector('[role=dialog]');
      cards = {text: dialog ? dialog.innerText : '',
               images: [...document.querySelectorAll('[role=dialog] img')].filter(i => i.complete && i.naturalWidth > 0).length};
      const first = document.querySelector('[role=dialog] img');
      if (first) { first.scrollIntoView({block: 'end'}); await new Promise(r => setTimeout(r, 400)); }
    }
    done({listed, thumbs, cards});
  } catch (e) { done({error: String((e && e.stack) || e)}); }
})();
"""

_CLOSE_DIALOGS_JS = """
document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
document.querySelectorAll('[role=dialog] button[aria-label=Close], [role=dialog] .p-dialog-close-button')
  .forEach(b => b.click());
"""


def test_templates_listed_once_with_thumbnails(editor, host_info, frontend):
    """The template browser lists each shipped workflow once (only example_workflows/ holds UI files),
    and every card's ``<name>.jpg`` is served."""
    result = editor.execute_async_script(_TEMPLATES_JS, PACK_NAME, list(SHIPPED))
    assert "error" not in result, result.get("error")
    if result["listed"] is None:
        pytest.skip("this host has no template browser (/api/workflow_templates)")
    listed = result["listed"].get(PACK_NAME, [])
    assert sorted(listed) == sorted(SHIPPED), listed  # once each
    for name in SHIPPED:
        assert thumbnail_path(name).is_file()
        assert result["thumbs"][name] == [200, "image/jpeg"], (name, result["thumbs"][name])
    if result["cards"] is not None:
        text = result["cards"]["text"]
        assert all(text.count(name) == 1 for name in SHIPPED), text
        assert result["cards"]["images"] >= len(SHIPPED), result["cards"]
        out = _screenshot_dir(host_info.path, frontend) / "template_browser.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        _save_small_png(editor.get_screenshot_as_png(), out)
    editor.execute_script(_CLOSE_DIALOGS_JS)


_MISSING_JS = """
const [wf, done] = arguments;
(async () => {
  try {
    await app.ui.settings.setSettingValueAsync('Comfy.Workflow.ShowMissingModelsWarning', true);
    await app.refreshComboInNodes();
    await app.loadGraphData(wf, true, true, 'missing_models');
    await new Promise(r => setTimeout(r, 2500));
    const button = [...document.querySelectorAll('button')].find(b => /view details/i.test(b.innerText));
    if (button) { button.click(); await new Promise(r => setTimeout(r, 2000)); }
    const section = [...document.querySelectorAll('section')].find(e => /Missing Models/.test(e.innerText || ''));
    const adapter = app.graph._nodes.find(n => n.type === 'InfiniteIDAdapterLoader');
    const options = adapter.widgets.find(w => w.name === 'adapter_name').options.values;
    done({panel: section ? section.innerText : null, adapterOptions: typeof options === 'function' ? options() : options});
  } catch (e) { done({error: String((e && e.stack) || e)}); }
})();
"""


def test_missing_models_panel_names_every_folder(editor, host_info, server_base, frontend):
    """No model installed: the panel lists the checkpoint and CLIP vision with their folders (from the
    workflow's ``models`` metadata and the host); the adapter loader offers its default name, so ComfyUI's
    list check passes and the pack's own message names models/infiniteid on Run."""
    if not _is_current_host(host_info.path):
        pytest.skip("the 2024 editor has no missing-models panel")
    workflow = json.loads(ui_paths("raw_photo")[0].read_text())
    placeholders = [server_base / rel for rel in _workflow_files() if rel.startswith("models/")]
    saved = {path: path.read_bytes() for path in placeholders}
    for path in placeholders:
        path.unlink()
    try:
        result = editor.execute_async_script(_MISSING_JS, workflow)
        assert "error" not in result, result.get("error")
        panel = result["panel"]
        print(f"\nmissing-models panel ({frontend}):\n{panel}")
        assert panel is not None, "no missing-models panel"
        lines = [line.strip() for line in panel.splitlines() if line.strip()]
        for file_name, folder in (("sd_xl_base_1.0.safetensors", "checkpoints"),
                                  ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision")):
            assert file_name in lines and lines[lines.index(file_name) + 1] == folder, lines
        assert "Unknown" not in panel
        assert result["adapterOptions"] == ["ip-adapter-faceid-plusv2_sdxl.bin"]  # identities/ left out
        out = _screenshot_dir(host_info.path, frontend) / "missing_models.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        _save_small_png(editor.get_screenshot_as_png(), out)
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
        editor.execute_async_script("const done = arguments[0]; app.refreshComboInNodes().then(() => done(1));")


_GRAPH_STATE_JS = """
const [wf, types, done] = arguments;
(async () => {
  try {
    await app.loadGraphData(wf, true, true, 'state');
    await new Promise(r => setTimeout(r, 300));
    const node = LiteGraph.createNode('InfiniteIDAdapterLoader');
    const values = node.widgets.find(w => w.name === 'adapter_name').options.values;
    const prompt = JSON.parse(JSON.stringify((await app.graphToPrompt()).output));
    const errors = app.graph._nodes.filter(n => n.has_errors).map(n => n.type);
    const byType = app.canvas.default_connection_color_byType || {};
    done({values: typeof values === 'function' ? values() : values, prompt, errors,
          linkColours: Object.fromEntries(types.map(t => [t, LGraphCanvas.link_type_colors[t]])),
          connColours: Object.fromEntries(types.map(t => [t, byType[t]]))});
  } catch (e) { done({error: String((e && e.stack) || e)}); }
})();
"""


def test_old_workflow_adapter_list_and_link_colours(editor, frontend):
    """A workflow saved with version 0.2.0's output names (``INFINITEID_IDENTITY``, ``FACEANALYSIS``)
    loads and queues as before; a new adapter loader lists no saved identity; the pack's three types keep
    their link colours after the editor's colour palette has loaded."""
    old = json.loads(OLD_WORKFLOW.read_text())
    assert {"INFINITEID_IDENTITY", "FACEANALYSIS"} <= {o["name"] for n in old["nodes"] for o in n["outputs"]}
    result = editor.execute_async_script(_GRAPH_STATE_JS, old, list(TYPE_COLOURS))
    assert "error" not in result, result.get("error")
    assert not result["errors"], result["errors"]
    want, got = ui_to_api(old), result["prompt"]
    assert sorted(got, key=int) == sorted(want, key=int)
    for nid, node in want.items():
        assert got[nid]["class_type"] == node["class_type"]
        for key, value in node["inputs"].items():
            assert _same(got[nid]["inputs"][key], value), f"node {nid} input {key}"
    assert not [v for v in result["values"] if v.startswith("identities/")], result["values"]
    assert result["linkColours"] == TYPE_COLOURS, result
    if any(result["connColours"].values()):
        assert result["connColours"] == TYPE_COLOURS, result
