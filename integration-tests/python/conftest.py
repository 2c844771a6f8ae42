"""Starts the real hyprstream-server binary for the Python tests."""
import os
import signal
import subprocess
import tempfile
import threading

import pytest


def server_binary():
    path = os.environ.get("HYPRSTREAM_SERVER_BIN")
    if not path:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/hyprstream/target"))
        path = os.path.join(target, "release", "hyprstream-server")
    assert os.path.exists(path), f"{path} not built: run `make test`"
    return path


def models_dir():
    """Where `make models` unpacked the pinned models."""
    root = os.environ.get("HYPRSTREAM_MODELS_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "models")
    return os.path.abspath(root)


class Server:
    def __init__(self, data_dir, extra_args=()):
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [server_binary(), "--data-dir", data_dir, "--addr", "127.0.0.1:0", *extra_args],
            stdout=subprocess.PIPE,
            env={**os.environ, "HYPRSTREAM_LOG": "warn"},
            text=True,
        )
        ready = threading.Event()
        self.addr = None

        def read():
            for line in self.proc.stdout:
                if line.startswith("hyprstream-server listening on "):
                    self.addr = line.split()[-1]
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(120), "server did not report its address"
        self.url = f"grpc://{self.addr}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def server():
    with tempfile.TemporaryDirectory() as d:
        s = Server(d)
        yield s
        if s.proc.poll() is None:
            s.stop()


@pytest.fixture
def model_server():
    """A server started as `make run` starts it: importing the default model on first start."""
    model = os.path.join(models_dir(), "all-minilm-l6-v2")
    assert os.path.exists(os.path.join(model, "model.safetensors")), f"{model} missing: run `make models`"
    with tempfile.TemporaryDirectory() as d:
        s = Server(d, ["--import-model", f"all-minilm-l6-v2={model}"])
        yield s
        if s.proc.poll() is None:
            s.stop()
