"""The package top exports the main classes, lazily, as diffusers users expect."""

import subprocess
import sys

import pytest

import icg


@pytest.mark.parametrize("name", icg.__all__)
def test_every_public_name_resolves(name):
    value = getattr(icg, name)
    assert value.__module__.startswith("icg."), name
    assert value.__doc__, f"{name} has no docstring"


def test_from_icg_import_the_pipeline():
    from icg import ICGModel, ICGPipeline

    assert ICGPipeline.__name__ == "ICGPipeline" and ICGModel.__name__ == "ICGModel"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        icg.nope  # noqa: B018


def test_import_icg_loads_no_torch():
    code = "import sys, icg; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_lists_exactly_the_exports():
    assert sorted(icg.__all__) == sorted(icg._EXPORTS)
