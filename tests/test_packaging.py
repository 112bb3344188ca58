"""Every Python package in the source folders is listed in pyproject.toml, so a non-editable
install (what users and CI get) carries it: a missing entry works in a development checkout and
breaks every installed copy."""

import tomllib

from .conftest import ROOT


def test_every_package_folder_is_installed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, folders = set(tool["packages"]), tool["package-dir"]
    assert set(folders) <= listed
    for package, folder in folders.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in relative.parts:
                continue
            name = ".".join((package, *relative.parts)) if relative.parts else package
            assert name in listed, f"{name} ({init.parent.relative_to(ROOT)}) is not in pyproject.toml's packages"
            assert name in folders or any(name.startswith(p + ".") for p in folders)
