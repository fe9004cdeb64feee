"""The README and docs/*.md: a short front page, links that resolve, and every code block runs as written.

How blocks run is in tests/docs_blocks.py (and docs/contributing.md). The fast lane runs the python blocks of every
page in-process; the slow tests run each page whole, bash blocks included, in a fresh process. Models the pages name
are stand-ins saved here once per session: tiny models as `vqshape-pretrained`, `vqshape-basicmotions` (a 6-channel
BasicMotions classifier), `vqshape-text` (a text alignment with the offline all-MiniLM-L6-v2), the same folders under
the Hub ids `lab/vqshape-geneactiv` and `lab/vqshape-basicmotions` (a local folder wins over the Hub), and the tiny
original checkpoint as `VQShape.ckpt` with its `reference_outputs.safetensors`. docs/hub.md gets no `lab/` folders: it
runs against the local Hub stand-in.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ORIGINAL_TINY, REPO_ROOT, TINY
from .docs_blocks import LANGUAGES, PAGES, RAN, BlockFailed, parse, run_page, text_model_path

README_LIMIT = 10 * 1024 + 512  # "about 10 KB"
HUB_PAGE = "docs/hub.md"  # its blocks push: they run against tests/hub_stand_in.py, in the slow lane only
# python blocks that the fast lane leaves to the slow one, and why
SLOW_PYTHON = {HUB_PAGE: "pushes to the local Hub stand-in",
               "docs/text_alignment.md": "loads a sentence-transformer and embeds texts (about 15 s)"}
PAGE_NAMES = [str(page.relative_to(REPO_ROOT)) for page in PAGES]
BASICMOTIONS = ["standing", "walking", "running", "badminton"]
HUB_IDS = {"lab/vqshape-geneactiv": "vqshape-pretrained", "lab/vqshape-basicmotions": "vqshape-basicmotions"}


# ---------------------------------------------------------------------------------------------------------------------
# The pages themselves
# ---------------------------------------------------------------------------------------------------------------------


def test_readme_is_a_front_page():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= README_LIMIT, "README.md grew past about 10 KB: move detail to docs/"
    # the title, one paragraph on what VQShape is, then the two set-up commands: install with the train extra and
    # pre-train; install with the dev extra and run the tests (their exact words may change)
    opening = readme.split("```")[0].strip().split("\n\n")
    assert len(opening) == 2 and opening[0].startswith("# ") and "VQShape" in opening[1]
    first_block = parse(REPO_ROOT / "README.md")[0]
    assert first_block.language == "bash" and first_block.not_run is None
    pretrain, tests = first_block.code.splitlines()
    assert "pip install" in pretrain and ".[train]" in pretrain and pretrain.endswith("examples/pretrain.py")
    assert "pip install" in tests and ".[dev]" in tests and tests.endswith("pytest tests")


def test_every_block_runs_or_says_why_not():
    """Every block is python or bash, or is marked `<!-- not run: reason -->` with a reason; marks stay few."""
    marked = []
    for page in PAGES:
        for block in parse(page):
            if block.not_run is not None:
                assert len(block.not_run) >= 10, f"{block.where}: say why it does not run"
                marked.append(block.where)
            else:
                assert block.language in LANGUAGES, f"{block.where}: ```{block.language} can't run; mark it"
    assert len(marked) <= 6, f"too many blocks not run: {marked}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve():
    anchors = {}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        anchors[page] = {_slug(match) for match in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: the link {target} leads nowhere"
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors[resolved], f"{page.name}: no heading {anchor!r} in {resolved.name}"


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """The stand-in folders, saved once; `prepare` copies them into a page's fresh folder."""
    from modeling_vqshape import (
        VQShapeConfig,
        VQShapeForPreTraining,
        VQShapeForTimeSeriesClassification,
    )

    root = tmp_path_factory.mktemp("docs-stand-ins")
    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).eval().save_pretrained(root / "vqshape-pretrained")
    config = VQShapeConfig(**TINY, num_input_channels=6, num_labels=4, id2label=dict(enumerate(BASICMOTIONS)),
                           label2id={label: index for index, label in enumerate(BASICMOTIONS)})
    VQShapeForTimeSeriesClassification(config).eval().save_pretrained(root / "vqshape-basicmotions")
    for name in ("VQShape.ckpt", "reference_outputs.safetensors"):
        shutil.copy(ORIGINAL_TINY / name, root / name)
    return root


@pytest.fixture(scope="session")
def text_stand_in(stand_ins, tmp_path_factory):
    """`vqshape-text`: the tiny pre-trained stand-in aligned (untrained heads) with the offline all-MiniLM-L6-v2."""
    from modeling_vqshape import VQShapeForPreTraining, VQShapeForTextAlignment

    folder = tmp_path_factory.mktemp("docs-text") / "vqshape-text"
    torch.manual_seed(0)
    aligned = VQShapeForTextAlignment.from_vqshape(
        VQShapeForPreTraining.from_pretrained(stand_ins / "vqshape-pretrained"),
        text_model_name_or_path=text_model_path(), projection_hidden_dim=32)
    aligned.eval().save_pretrained(folder)
    return folder


def prepare(stand_ins: Path, folder: Path, page: str, text_stand_in: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for item in [*stand_ins.iterdir(), *([text_stand_in] if text_stand_in else [])]:
        (shutil.copytree if item.is_dir() else shutil.copy)(item, folder / item.name)
    if page != HUB_PAGE:
        for hub_id, source in HUB_IDS.items():
            shutil.copytree(stand_ins / source, folder / hub_id)
    (folder / "examples").symlink_to(REPO_ROOT / "examples")  # the commands run examples/*.py from the root
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# Running the blocks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [name for name in PAGE_NAMES if name not in SLOW_PYTHON])
def test_python_blocks(page, stand_ins, tmp_path):
    """The page's python blocks, in order, in one namespace, in a fresh folder with the stand-ins."""
    folder = prepare(stand_ins, tmp_path / "page", page)
    try:
        ran = run_page(page, folder, shell=False)
    except BlockFailed as failure:
        pytest.fail(str(failure), pytrace=False)
    expected = [block for block in parse(REPO_ROOT / page) if block.not_run is None and block.language == "python"]
    assert [block for block, _ in ran] == expected


@pytest.fixture
def hub_environment():
    """For docs/hub.md: the local Hub stand-in's endpoint, a token and caches of its own."""
    from .hub_stand_in import HubStandIn

    with HubStandIn(request_timeout=60) as stand_in:
        yield {"HF_ENDPOINT": stand_in.endpoint, "HF_TOKEN": "hf_stand_in", "HF_HUB_OFFLINE": "0",
               "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1",
               "no_proxy": "127.0.0.1"}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGE_NAMES)
def test_whole_page(page, stand_ins, text_stand_in, tmp_path, request):
    """The whole page, bash blocks included, in document order, in a fresh process and folder."""
    folder = prepare(stand_ins, tmp_path / "page", page, text_stand_in)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "ACCELERATE_USE_CPU": "1", "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HF_HUB_CACHE", None)
    if page == HUB_PAGE:
        env.update(request.getfixturevalue("hub_environment"))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tests.docs_blocks", page, str(folder)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-8000:]
    expected = [block for block in parse(REPO_ROOT / page) if block.not_run is None]
    ran = [line[len(RAN):] for line in result.stdout.splitlines() if line.startswith(RAN)]
    assert [entry.split(" (")[0] for entry in ran] == [block.where for block in expected], result.stdout[-4000:]
    print(f"{page}: {time.perf_counter() - started:.1f} s", *ran, sep="\n  ")
