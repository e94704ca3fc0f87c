"""One tiny converted Core ML program per test session (converting takes about a second)."""

import pytest

from pkgio_child import build_tiny_model


@pytest.fixture(scope="session")
def tiny_mlmodel():
    return build_tiny_model()
