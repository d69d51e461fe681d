"""The client examples in clients/ (installed on a node in /opt/app/test), each run as a user runs
it against a real node: REST and gRPC through Envoy, resnet with a JPEG, and the generic client
that reads a model's signature from its metadata on half_plus_two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO
from tests.integration.node_harness import NodeUnderTest, new_node, node_running
from tests.jpeg import make_jpeg

pytestmark = pytest.mark.slow

CLIENTS = REPO / "clients"
HPT = "saved_model_half_plus_two_mkl"


@pytest.fixture(scope="module")
def node(builtin_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderTest]:
    node = new_node(tmp_path_factory.mktemp("clients") / "root", builtin_models, [HPT, "resnet"])
    started = node.cli("up", "--timeout", "300", "--set", f"model.name={HPT},resnet",
                       "--set", "logviewer.enabled=false", *node.overrides)
    with node_running(node, started):
        yield node


def run_client(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(CLIENTS / script), *args], capture_output=True,
                            text=True, timeout=120)
    return result


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jpeg") / "cat.jpg"
    path.write_bytes(make_jpeg(seed=3))
    return path


def test_resnet_rest_client(node: NodeUnderTest, jpeg: Path) -> None:
    server = f"{node.address}:{node.http_port}"
    result = run_client("resnet_client.py", str(jpeg), "--server", server)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Prediction class: "), result.stdout
    answer = json.loads(run_client("resnet_client.py", str(jpeg), "--server", server, "--json").stdout)
    cls = answer["predictions"][0]["classes"]
    assert 1 <= cls <= 1000 and f"Prediction class: {cls}," in result.stdout


def test_resnet_grpc_client_agrees_with_rest(node: NodeUnderTest, jpeg: Path) -> None:
    rest = run_client("resnet_client.py", str(jpeg), "--server", f"{node.address}:{node.http_port}")
    grpc = run_client("resnet_client_grpc.py", str(jpeg), "--server", f"{node.address}:{node.grpc_port}")
    assert grpc.returncode == 0, grpc.stderr
    assert grpc.stdout.split(",")[0] == rest.stdout.split(",")[0]
    assert "(model resnet version 1)" in grpc.stdout


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_generic_client_reads_the_signature_and_predicts(node: NodeUnderTest, transport: str) -> None:
    port = node.http_port if transport == "rest" else node.grpc_port
    extra = ["--grpc"] if transport == "grpc" else []
    server = f"{node.address}:{port}"
    result = run_client("model_client.py", HPT, "1.0", "2.0", "5.0", "--server", server,
                        "--show-signature", *extra)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"y": [[2.5], [3.0], [4.5]]}
    assert "input x: DT_FLOAT [-1, 1]" in result.stderr
    # Another signature of the same model, its input named on the command line.
    other = run_client("model_client.py", HPT, "--signature", "regress_x2_to_y3",
                       "--input", "inputs=[[1.0], [4.0]]", "--server", server, *extra)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout) == {"outputs": [[3.5], [5.0]]}


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_generic_client_sends_a_file_to_resnet(node: NodeUnderTest, jpeg: Path, transport: str) -> None:
    port = node.http_port if transport == "rest" else node.grpc_port
    extra = ["--grpc"] if transport == "grpc" else []
    result = run_client("model_client.py", "resnet", "--input", f"image_bytes=@{jpeg}",
                        "--server", f"{node.address}:{port}", *extra)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"classes", "probabilities"} and len(answer["probabilities"][0]) == 1001


def test_generic_client_says_what_the_signature_wants(node: NodeUnderTest) -> None:
    result = run_client("model_client.py", HPT, "--input", "z=[1]",
                        "--server", f"{node.address}:{node.http_port}")
    assert result.returncode == 1
    assert "the signature's inputs are ['x']; not inputs: ['z']; no value given for ['x']" in result.stderr
