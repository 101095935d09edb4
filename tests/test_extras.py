"""Optional dependencies fail with the package and the extra that installs it."""

import pytest


def test_missing_extras_name_the_package_and_the_extra():
    from spiketwin.extras import require

    with pytest.raises(ImportError, match=r"^ImageFolder needs Pillow: pip install 'spiketwin\[vision\]'$"):
        require("PIL.no_such_module_here", "vision", "ImageFolder")
    with pytest.raises(ImportError, match=r"^X needs nope: pip install 'spiketwin\[io\]'$"):
        require("nope.sub", "io", "X")
    assert require("json", "io", "X").dumps([1]) == "[1]"
