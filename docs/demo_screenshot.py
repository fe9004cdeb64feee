"""Take the README's screenshot of the demo (docs/demo.png): the demo of a classifier, with one BasicMotions TRAIN
recording (6 channels at 10 Hz) uploaded as a CSV, driven by the headless Chromium the tests use.

    accelerate launch examples/finetune.py --model_name_or_path vqshape-pretrained --dataset BasicMotions \\
        --output_dir vqshape-basicmotions
    python docs/demo_screenshot.py --model vqshape-basicmotions
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CHANNEL_NAMES = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vqshape-basicmotions")
    parser.add_argument("--label", default="walking", help="Which class's first TRAIN recording to upload.")
    parser.add_argument("--output", default=str(Path(__file__).with_name("demo.png")))
    args = parser.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from modeling_vqshape.tasks.classification import load_classification_dataset

    train = load_classification_dataset("BasicMotions")["train"]
    index = next(i for i, label in enumerate(train.labels) if str(label).lower() == args.label)
    workdir = Path(tempfile.mkdtemp(prefix="vqshape-screenshot-"))
    upload = workdir / f"basicmotions-{args.label}.csv"
    np.savetxt(upload, np.asarray(train.series[index]).T, delimiter=",", header=",".join(CHANNEL_NAMES), comments="")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "modeling_vqshape.sharing.demo", "--model", args.model, "--port",
                               str(port)], env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
                              start_new_session=True)
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1900"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    page = None
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        page = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        page.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(page, 120)
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))[0].send_keys(str(upload))
        wait.until(lambda p: upload.stem in p.find_element(By.CSS_SELECTOR, "#upload").text)
        rate = page.find_element(By.CSS_SELECTOR, "input[type=number]")
        rate.clear()
        rate.send_keys("10")  # BasicMotions: 10 s at 10 Hz
        page.find_element(By.CSS_SELECTOR, "#analyse").click()
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#atlas img"))
        time.sleep(1)
        page.save_screenshot(args.output)
        print(f"wrote {args.output}")
    finally:
        if page is not None:
            page.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
