"""requirements.txt declares ranges (a user's own torch is kept); constraints files lock exact versions for CI."""
from pathlib import Path
from typing import Dict

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _lines(name: str):
    for line in (ROOT / name).read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            yield line


def _requirements() -> Dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, _lines('requirements.txt'))}


def _pins(name: str) -> Dict[str, Version]:
    pins = {}
    for line in _lines(name):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == '==', f'{name}: {line} is not an exact pin'
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_requirements_are_ranges_with_a_floor_so_an_installed_torch_is_kept():
    reqs = _requirements()
    assert {'torch', 'torchvision', 'timm'} <= set(reqs)
    for name, req in reqs.items():
        ops = {s.operator for s in req.specifier}
        assert '>=' in ops, f'{name} has no lower bound'
        assert not ops & {'==', '===', '~='}, f'{name} is pinned in requirements.txt; pins belong in constraints.txt'
    # a torch 2.6 that a cluster already has must satisfy the range
    assert reqs['torch'].specifier.contains('2.6.0') and reqs['torch'].specifier.contains('2.11.0+cu130')


@pytest.mark.parametrize('lock', ['constraints.txt', 'constraints-oldest.txt'])
def test_every_lock_pins_each_requirement_inside_its_range(lock):
    pins = _pins(lock)
    for name, req in _requirements().items():
        assert name in pins, f'{lock} does not pin {name}'
        assert req.specifier.contains(pins[name]), f'{lock}: {name}=={pins[name]} is outside {req.specifier}'


def test_oldest_lock_sits_on_the_floors_of_torch_torchvision_and_timm():
    pins, reqs = _pins('constraints-oldest.txt'), _requirements()
    for name in ('torch', 'torchvision', 'timm'):
        floor = next(Version(s.version) for s in reqs[name].specifier if s.operator == '>=')
        assert pins[name] == floor, f'constraints-oldest.txt pins {name}=={pins[name]}, the floor is {floor}'
