"""The package's copy of the Falco samples (what `make demo` posts, and what tests use in a
checkout without shared/) is byte for byte the shared set."""

from __future__ import annotations

import pytest

from tests.support.samples import PACKAGED, shared_dir


def test_the_packaged_samples_are_the_shared_samples() -> None:
    shared = shared_dir()
    if shared is None:
        pytest.skip("no shared/samples/falco beside this checkout")
    names = sorted(p.name for p in shared.iterdir() if p.suffix in (".json", ".ndjson"))
    assert names == sorted(p.name for p in PACKAGED.iterdir())
    for name in names:
        assert (PACKAGED / name).read_bytes() == (shared / name).read_bytes(), name
