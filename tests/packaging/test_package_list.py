"""setup.cfg lists every package explicitly (package_dir maps the folders onto `garrison.*`, so
setuptools cannot discover them): a package directory missing from the list is missing from the
wheel, and its imports fail only once installed. Every directory with an __init__.py under the
mapped folders must be listed, and every listed package must exist."""
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    options = parser["options"]
    listed = {line.strip() for line in options["packages"].splitlines() if line.strip()}
    mapping = {}
    for line in options["package_dir"].splitlines():
        if "=" in line:
            name, folder = (part.strip() for part in line.split("=", 1))
            mapping[name] = folder
    return listed, mapping


def _package_dirs(mapping):
    found = set()
    for name, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            if any(part.startswith(".") or part == "__pycache__" for part in relative):
                continue
            found.add(".".join((name, *relative)))
    return found


def test_every_package_directory_is_listed_in_setup_cfg():
    listed, mapping = _setup_cfg()
    assert set(mapping) == {"garrison.agent", "garrison.collectors", "garrison.wire", "garrison.detect",
                            "garrison.sim"}
    found = _package_dirs(mapping)
    assert sorted(found - listed) == [], "package directories missing from setup.cfg's packages"
    assert sorted(listed - found) == [], "setup.cfg lists packages that have no __init__.py"
