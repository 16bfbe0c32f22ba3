"""Installs the project's packages with the `batch-predict` console script.
This is also the file Dataflow workers install: `--setup_file ./setup.py`.

`localserver` (the demo and test prediction server) is not installed: workers never need it.
It runs from the repository root (`python -m localserver`), as ./run_local.sh, the tests and
the benchmarks do.
"""
import setuptools

# The layers, each imported only by those after it: core <- imaging, protocols <- engine <-
# transforms <- pipeline (docs/design.md).
PACKAGES = ("core", "imaging", "protocols", "engine", "transforms", "pipeline")

setuptools.setup(
    name="beam-batch-predict",
    version="0.1.0",
    description="Batch image prediction on Apache Beam against AutoML, ML Engine and Vertex AI "
                "endpoints: concurrent, rate limited, with per-record dead letters.",
    python_requires=">=3.9",
    packages=setuptools.find_packages(include=[
        f"{package}{suffix}" for package in PACKAGES for suffix in ("", ".*")]),
    install_requires=[
        "apache-beam[gcp]>=2.60,<3",
        "google-auth>=2.20,<3",
        "google-cloud-storage>=2.10,<4",
        "pillow>=10,<13",
        # imaging's tensors (numpy arrays end to end); apache-beam already depends on numpy.
        "numpy>=1.24,<3",
        "pyarrow>=14,<26",
        # async HTTP for the concurrent fan-out inside the Predict DoFn, and for the local
        # prediction server: the field's standard asyncio HTTP client/server.
        "aiohttp>=3.9,<4",
        "PyYAML>=6,<7",
    ],
    extras_require={
        # build: the sdist path Beam's stager takes first for --setup_file; wheel: lets pip
        # install that sdist offline (--no-build-isolation) as a worker would
        # (tests/test_packaging.py). pytest-xdist: ./run_tests.sh runs the test modules in
        # parallel processes (the suite mostly waits on servers and subprocesses). onnx: reads
        # the shipped model's graph (its embedding output is the classifier head's input).
        # tfrecord: an independent TFRecord writer (its own CRC32C and protoc-generated
        # Example) for tests/test_tfrecords.py.
        "test": ["pytest>=7,<10", "pytest-xdist>=3.5,<4", "gcp-storage-emulator>=2024.0",
                 "build>=1,<2", "wheel>=0.40,<1", "onnx>=1.15,<2", "tfrecord>=1.14,<2"],
        # model: the local server's real image classifiers (EfficientNet-Lite0, a user's ONNX
        # model) on the CPU; the demo and the tests install it.
        "model": ["onnxruntime>=1.17,<2", "numpy>=1.24,<3"],
    },
    entry_points={"console_scripts": ["batch-predict=pipeline.run:main"]},
)
