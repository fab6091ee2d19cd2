"""Shared fixtures. Every test runs with its own Hugging Face home and a Hub endpoint that refuses
connections, so no test can reach huggingface.co or touch the user's cache or token. The run ends with
one line on the tests skipped for want of real data."""

import pytest
from _data import ABSENT, DATA, DATA_ENV
from huggingface_hub import constants
from hub_server import HubServer, closed_endpoint


def pytest_terminal_summary(terminalreporter):
    """One line: how many tests skipped because a real-data file is absent, and how to point them at it."""
    reasons = [r.longrepr[2] for r in terminalreporter.stats.get("skipped", []) if isinstance(r.longrepr, tuple)]
    files = sorted({reason.split(ABSENT, 1)[1].split(" ")[0] for reason in reasons if ABSENT in reason})
    if files:
        n = sum(ABSENT in reason for reason in reasons)
        terminalreporter.write_line(
            f"{n} test{'s' * (n != 1)} skipped: real data {', '.join(files)} absent from {DATA}; set {DATA_ENV} "
            f"to the folder holding them (CI=true makes a missing file fail)", yellow=True, bold=True)


def _point_hub_at(monkeypatch, endpoint: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture(autouse=True)
def isolated_hf_home(monkeypatch, tmp_path_factory):
    """A fresh, empty HF_HOME; HF_ENDPOINT on a closed local port; no token; online mode."""
    home = tmp_path_factory.mktemp("hf_home")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_ASSETS_CACHE": home / "assets",
                        "HF_TOKEN_PATH": home / "token", "HF_STORED_TOKENS_PATH": home / "stored_tokens"}.items():
        monkeypatch.setattr(constants, name, str(value))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _point_hub_at(monkeypatch, closed_endpoint())
    return home


@pytest.fixture
def hub(monkeypatch):
    """A running Hub-compatible server (tests/hub_server.py) that HF_ENDPOINT points to; stopped afterwards."""
    with HubServer() as server:
        _point_hub_at(monkeypatch, server.url)
        yield server


@pytest.fixture
def go_offline(monkeypatch):
    """Call to switch on HF_HUB_OFFLINE=1 for the rest of the test."""

    def switch() -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return switch
