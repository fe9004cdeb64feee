import contextlib
import os
import signal
import subprocess

# huggingface_hub reads these when imported: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest.ini runs the tests in two worker processes (pytest-xdist): one thread each, and for the scripts they start,
# so that two workers share two cores without oversubscribing them (torch reads this when it starts its thread pool)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ORIGINAL_TINY = FIXTURES / "original_tiny"

TINY = dict(
    input_length=64,
    num_patches=8,
    patch_length=8,
    d_model=16,
    num_encoder_layers=2,
    num_encoder_heads=2,
    num_tokenizer_layers=2,
    num_tokenizer_heads=2,
    num_decoder_layers=2,
    num_decoder_heads=2,
    num_tokens=4,
    num_codes=8,
    code_dim=4,
    shape_length=16,
)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Scripts run in-process (`main([... "--num_threads", "1"])`) set torch's thread count for the whole process;
    give it back after each test, so that later tests compute with the default threads, as the fresh processes they
    compare against do (on some CPUs a different thread count changes float results in the last bits)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config():
    from modeling_vqshape import VQShapeConfig

    return VQShapeConfig(**TINY)


@pytest.fixture
def series_batch():
    """Four univariate series of 64 steps with distinct shapes, (batch_size, sequence_length)."""
    t = torch.linspace(0, 1, 64)
    generator = torch.Generator().manual_seed(0)
    return torch.stack(
        [
            torch.sin(2 * torch.pi * 3 * t),
            torch.where(t < 0.5, -1.0, 2.0),
            5 * t - 1,
            torch.randn(64, generator=generator) * 10 + 3,
        ]
    )


# two ranks on CPU (gloo): `--cpu --num_processes 2` would start one. Port 0: the launcher picks a free port on
# 127.0.0.1, so another job on the machine cannot cross its ranks. `run_script` sets ACCELERATE_USE_CPU=1.
TWO_CPU_RANKS = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                 "--main_process_port", "0"]


def run_script(command, timeout=240):
    """Run an example script (a launcher and its ranks too) offline, with the repository on the path, one thread per
    process and ranks on the CPU, and require it to succeed. Past `timeout` every process it started (a launcher's
    ranks run in sessions of their own) dumps its Python stacks (faulthandler, on SIGABRT) and is killed, and the test
    fails with those stacks: a hang says where it hung and leaves no rank behind."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = [psutil.Process(process.pid)]
        tree += tree[0].children(recursive=True)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGABRT)
        _, alive = psutil.wait_procs(tree, timeout=30)
        for member in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a process that left the tree (orphaned) still holds the pipes
            process.kill()
            stdout, stderr = "", "(no output: a process outside the launcher's tree kept the pipes open)"
        pytest.fail(f"{command[1:]} ran past {timeout} s; the stacks at that moment:\n{stdout[-3000:]}\n"
                    f"{stderr[-12000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
