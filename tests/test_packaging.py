"""pyproject.toml installs the whole checkout (``pip install -e .``): every top-level module and every package the
tools import, so a new module cannot be left out of the install unnoticed; dependencies come from requirements.txt."""
from pathlib import Path

import pytest

tomllib = pytest.importorskip('tomllib')  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _setuptools():
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']


def test_every_top_level_module_is_installed():
    modules = {p.stem for p in ROOT.glob('*.py')}
    assert set(_setuptools()['py-modules']) == modules


def test_every_package_of_models_and_scripts_is_installed_and_has_an_init():
    packages = set(_setuptools()['packages'])
    on_disk = {'.'.join(p.parent.relative_to(ROOT).parts) for top in ('models', 'scripts')
               for p in (ROOT / top).rglob('*.py') if '__pycache__' not in p.parts}
    assert packages == on_disk
    for pkg in packages:
        assert (ROOT / pkg.replace('.', '/') / '__init__.py').is_file(), pkg


def test_dependencies_are_read_from_requirements_txt():
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    assert 'dependencies' in project['dynamic'] and 'dependencies' not in project
    assert _setuptools()['dynamic']['dependencies'] == {'file': ['requirements.txt']}
