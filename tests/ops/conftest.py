"""Fixtures shared by the operator tests."""

from __future__ import annotations

import os
import shutil

import pytest

from acuzoo.ops import native


@pytest.fixture(scope="session")
def ext() -> str:
    """The loaded variant; builds the extension on a cold cache (about a minute)."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        # CI must prove the build; elsewhere a machine without the toolchain may skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no C++ compiler on this machine")
    loaded = native.load()
    assert loaded is not None, f"native extension failed to build: {native._failed}"
    return loaded
