"""The example notebooks replayed: every cell of every notebook of examples/ runs in a real kernel against
real server processes; no cell output shows more than a few thousand characters of text; and one executed
notebook, rendered to HTML by nbconvert, shows its pictures in headless Chromium."""

from __future__ import annotations

import os

import numpy as np
import pytest
from nbconvert import HTMLExporter
from nnprobe import AttentionClient, SequenceClient, VisionClient
from PIL import Image

from tests.support.notebooks import (
    chromium,
    chromium_run,
    displayed_text,
    example_notebooks,
    execute,
    image_sources,
)
from tests.support.processes import serve, stop

pytestmark = pytest.mark.system
#: The most text one output may show (the attack result's repr is about 600 characters).
OUTPUT_TEXT_LIMIT = 3000
SERVICES = {
    "vision": "NNPROBE_VISION_ADDR",
    "sequence": "NNPROBE_SEQUENCE_ADDR",
    "attention": "NNPROBE_ATTENTION_ADDR",
}
CLIENTS = {"vision": VisionClient, "sequence": SequenceClient, "attention": AttentionClient}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, shared_dir, free_port):
    """The three servers as processes; the environment a notebook kernel needs to reach them."""
    root = tmp_path_factory.mktemp("notebook-servers")
    env = {**os.environ, "NNPROBE_SHARED_DIR": str(shared_dir)}
    procs = []
    try:
        for name, variable in SERVICES.items():
            port = free_port()
            procs.append(
                serve(name, port, data=root / "data", cache=root / "cache", log=root / f"{name}.log")
            )
            address = f"127.0.0.1:{port}"
            with CLIENTS[name](address) as client:
                client.wait_until_ready(timeout=120)
            env[variable] = address
        yield env
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def executed(kernel_env, tmp_path_factory):
    """name -> the executed notebook, or the error text of the cell that failed."""
    workdir = tmp_path_factory.mktemp("notebooks")
    results = {}
    for path in example_notebooks():
        try:
            results[path.name] = execute(path, workdir, kernel_env)
        except Exception as error:
            results[path.name] = f"{type(error).__name__}: {error}"
    return results


def test_the_examples_cover_the_course_your_own_model_and_robustness():
    names = [p.stem for p in example_notebooks()]
    for part in ("1a", "1b", "1c", "2", "3", "4", "own_model", "robustness"):
        assert any(part in n for n in names), f"no example notebook for {part}: {names}"


@pytest.mark.parametrize("name", [p.name for p in example_notebooks()])
def test_every_cell_runs_and_shows_little_text(executed, name):
    notebook = executed[name]
    assert not isinstance(notebook, str), notebook[-3000:]
    shown = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", displayed_text(output)
            text = displayed_text(output)
            assert len(text) <= OUTPUT_TEXT_LIMIT, (
                f"{name}: an output of {len(text)} characters:\n{text[:500]}"
            )
            assert "b'\\x89PNG" not in text and "<script" not in str(
                output.get("data", {}).get("text/html", "")
            )
            shown += 1
    assert shown >= 3


def test_an_executed_notebook_shows_its_pictures_in_chromium(executed, tmp_path):
    browser = chromium()
    if browser is None:
        message = "Debian's chromium is not installed (make test installs it: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    notebook = executed["1c_adversarial.ipynb"]
    assert not isinstance(notebook, str), notebook[-3000:]
    body, _ = HTMLExporter(template_name="classic").from_notebook_node(notebook)
    sources = image_sources(body)
    pictures = [s for s in sources if s.startswith("data:image/png;base64,")]
    assert len(pictures) >= 3  # original, adversarial, perturbation
    # A probe of the test's own: after load, the page's title counts the <img> that decoded.
    probe = (
        "<script>window.addEventListener('load', () => { const i = [...document.images];"
        " const ok = i.filter(x => x.complete && x.naturalWidth > 0).length;"
        " document.title = 'loaded ' + ok + ' of ' + i.length;"
        " });</script>"
    )
    page = tmp_path / "notebook.html"
    page.write_text(body.replace("</head>", probe + "</head>", 1))
    dom = chromium_run(browser, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = dom.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title == f"loaded {len(sources)} of {len(sources)}", title
    shot = tmp_path / "shot.png"
    run = chromium_run(browser, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    assert (pixels.min(axis=1) < 250).mean() > 0.05  # not blank
    assert colours > 2000, f"{colours} colours: the photographs are not drawn"


def test_html_rendering_of_every_notebook_is_script_free_in_outputs(executed):
    for name, notebook in executed.items():
        if isinstance(notebook, str):
            continue
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                html = output.get("data", {}).get("text/html", "")
                assert "<script" not in html and "javascript:" not in html, name
