"""resolve_source: dispatch on model.source and errors for incomplete model configs."""

from __future__ import annotations

import pytest
from sources_helpers import ModelConfig

from sdbuild.errors import SdbuildError
from sdbuild.sources import resolve_source


@pytest.mark.parametrize(("config", "message", "hint"), [
    (ModelConfig("hub"), "model.source=hub needs model.id", "model.id="),
    (ModelConfig("local"), "model.source=local needs model.path", "model.path="),
    (ModelConfig("file"), "model.source=file needs model.path", "model.path="),
    (ModelConfig("ftp"), "unknown model.source 'ftp'", "hub, local, file, synthetic"),
])
def test_incomplete_or_unknown_sources_are_clear_errors(config, message, hint):
    with pytest.raises(SdbuildError) as error:
        resolve_source(config)
    assert error.value.message == message
    assert hint in error.value.hint
