"""GPU profiles: admin config parsing, who is offered what, and resolving choices."""
from __future__ import annotations

import pytest

from hami_kernel.slice import GIB, Slice
from hami_spawner.profiles import (ChoiceError, CustomRange, GpuProfile, GpuProfiles,
                                   ProfileError)

SMALL = {"name": "small", "display_name": "Small", "memory": "8GiB", "cores": 25,
         "default": True}
BIG = {"name": "big", "memory": "40GiB", "cores": 100, "gpu_types": "H100",
       "groups": ["research"], "policy": "spread"}
CUSTOM = {"memory_min": "2GiB", "memory_max": "16GiB", "memory_step": "2GiB",
          "cores_min": 10, "cores_max": 50, "cores_step": 5, "count_max": 2,
          "groups": ["power"]}


def make(profiles=(SMALL, BIG), custom=CUSTOM, **kw) -> GpuProfiles:
    return GpuProfiles(profiles=list(profiles), custom=custom, **kw)


def test_from_config_full_and_defaults():
    p = GpuProfile.from_config(BIG)
    assert p.slice == Slice(40 * GIB, None, 1)
    assert (p.gpu_types, p.avoid_gpu_types, p.policy) == (("H100",), (), "spread")
    assert p.groups == frozenset({"research"}) and p.default is False
    assert p.display_name == "big" and p.description == "40 GiB"
    whole = GpuProfile.from_config({"name": "whole2", "count": 2})
    assert whole.slice == Slice(None, None, 2) and whole.policy == "binpack"
    assert whole.groups == frozenset() and whole.description == "2 × whole GPU"


@pytest.mark.parametrize("config, words", [
    ("small", ["must be a dict"]),
    ({"memory": "8GiB"}, ["'name'", "slug"]),
    ({"name": "Big Box"}, ["'Big Box'", "slug"]),
    ({"name": "custom"}, ["reserved"]),
    ({"name": "x", "memroy": "8GiB"}, ["'x'", "memroy"]),
    ({"name": "x", "memory": "8GB"}, ["'x'", "ambiguous"]),
    ({"name": "x", "cores": 150}, ["'x'", "compute share"]),
    ({"name": "x", "count": 0}, ["'x'", "count"]),
    ({"name": "x", "policy": "random"}, ["'x'", "'policy'"]),
    ({"name": "x", "groups": [""]}, ["'x'", "'groups'"]),
    ({"name": "x", "gpu_types": 3}, ["'x'", "'gpu_types'"]),
    ({"name": "x", "default": "yes"}, ["'x'", "'default'"]),
    ({"name": "x", "display_name": 5}, ["'x'", "'display_name'"]),
])
def test_from_config_errors(config, words):
    with pytest.raises(ProfileError) as info:
        GpuProfile.from_config(config)
    for word in words:
        assert word in str(info.value)


def test_parsed_duplicates_defaults_and_cpu_name():
    with pytest.raises(ProfileError, match="unique.*small"):
        make([SMALL, SMALL]).parsed()
    with pytest.raises(ProfileError, match="at most one.*default"):
        make([SMALL, dict(BIG, default=True)]).parsed()
    with pytest.raises(ProfileError, match="CPU-only"):
        make([dict(SMALL, name="cpu")]).parsed()
    profiles = make()
    assert [p.name for p in profiles.parsed()] == ["small", "big"]
    assert profiles.parsed() is profiles.parsed()  # validated once
    profiles.profiles = [BIG]
    assert [p.name for p in profiles.parsed()] == ["big"]


def test_traits_are_configurable_and_documented():
    for name in ("profiles", "custom", "max_gpu_servers_per_user", "cpu_profile_name",
                 "cpu_profile_display_name"):
        trait = GpuProfiles.class_traits()[name]
        assert trait.metadata.get("config") is True and trait.help
    assert "c.GpuProfiles.profiles" in GpuProfiles.class_traits()["profiles"].help
    with pytest.raises(Exception, match=">= 0"):
        GpuProfiles(max_gpu_servers_per_user=-1)


@pytest.mark.parametrize("custom, words", [
    ({"memory_max": "8GiB"}, ["memory_min", "required"]),
    ({"memory_min": "8GiB", "memory_max": "4GiB"}, ["memory_min is larger"]),
    ({"memory_min": "1GiB", "memory_max": "4GiB", "cores_max": 101}, ["cores_max"]),
    ({"memory_min": "1GiB", "memory_max": "4GiB", "count_max": 0}, ["count_max"]),
    ({"memory_min": "1GiB", "memory_max": "4GiB", "colour": 1}, ["colour"]),
    ({"memory_min": "lots", "memory_max": "4GiB"}, ["memory_min"]),
])
def test_custom_range_config_errors(custom, words):
    with pytest.raises(ProfileError) as info:
        make(custom=custom).parsed()
    for word in words:
        assert word in str(info.value)


def test_custom_range_validate():
    bounds = CustomRange.from_config(CUSTOM)
    assert bounds.validate("6GiB", "35", "2") == Slice(6 * GIB, 35, 2)
    assert bounds.validate("2GiB", "10%") == Slice(2 * GIB, 10, 1)
    for args, match in [(("18GiB", "20"), "outside.*2 GiB to 16 GiB"),
                        (("1GiB", "20"), "outside"),
                        (("3GiB", "20"), "multiple of 2 GiB"),
                        (("4GiB", "55"), "outside.*10% to 50%"),
                        (("4GiB", "12"), "multiple of 5%"),
                        (("4GiB", "20", "3"), "count 3 exceeds.*2"),
                        (("4GiB", "20", "0"), "count"),
                        (("lots", "20"), "invalid memory")]:
        with pytest.raises(ChoiceError, match=match):
            bounds.validate(*args)


def test_offered_to_by_groups():
    profiles = make()
    assert [p.name for p in profiles.offered_to(set())] == ["small"]
    assert [p.name for p in profiles.offered_to({"research", "x"})] == ["small", "big"]
    assert [p.name for p in profiles.offered_to(set(), is_admin=True)] == ["small", "big"]
    assert profiles.custom_offered_to({"power"}) and not profiles.custom_offered_to(set())
    assert profiles.custom_offered_to(set(), is_admin=True)


def test_resolve_valid_choices():
    profiles = make()
    assert profiles.resolve({"profile": "small"}, set()).name == "small"
    assert profiles.resolve({"profile": "big"}, {"research"}).slice.memory == 40 * GIB
    assert profiles.resolve({"profile": "big"}, set(), is_admin=True).name == "big"
    assert profiles.resolve({"profile": "cpu"}, set()) is None
    custom = profiles.resolve({"profile": "custom", "memory": "4GiB", "cores": "20",
                               "count": "2"}, {"power"})
    assert custom.name == "custom" and custom.slice == Slice(4 * GIB, 20, 2)
    assert custom.display_name == "Custom: 2 × 4 GiB · 20%"
    assert profiles.resolve({"profile": "custom", "memory": "4GiB", "cores": "20"},
                            {"power"}).slice.count == 1


@pytest.mark.parametrize("choice, groups, match", [
    ({"profile": "huge"}, {"research"}, "unknown GPU profile 'huge'.*'small'"),
    ({"profile": "big"}, set(), "unknown GPU profile 'big'"),
    ({"profile": "small", "memory": "80GiB"}, set(), "fixed size.*'memory'"),
    ({"profile": "small", "cores": "100"}, set(), "fixed size.*'cores'"),
    ({"profile": "cpu", "count": "4"}, set(), "fixed size"),
    ({}, set(), "no GPU profile chosen"),
    ({"profile": ""}, set(), "no GPU profile chosen"),
    ({"profile": ["small"]}, set(), "strings"),
    ({"profile": "custom", "memory": "4GiB", "cores": "20"}, set(), "not offered"),
    ({"profile": "custom", "memory": "64GiB", "cores": "20"}, {"power"}, "outside"),
    ({"profile": "custom", "memory": "5GiB", "cores": "20"}, {"power"}, "multiple"),
    ({"profile": "custom", "memory": "4GiB", "cores": "22"}, {"power"}, "multiple"),
    ({"profile": "custom", "memory": "4GiB"}, {"power"}, "exactly"),
    # sizes too large for any GPU (or for libvgpu's 64-bit counts): a 400, not a 500
    ({"profile": "custom", "memory": "9" * 30 + "TiB", "cores": "20"}, {"power"}, "too large"),
    ({"profile": "custom", "memory": str(1 << 64), "cores": "20"}, {"power"}, "too large"),
    ({"profile": "custom", "memory": "9" * 31 + "GiB", "cores": "20"}, {"power"}, "invalid memory size"),
    ({"profile": "custom", "memory": "1" * 5000, "cores": "20"}, {"power"}, "invalid memory size"),
    ({"profile": "custom", "memory": "4GiB", "cores": "20", "gpu_types": "H100"},
     {"power"}, "unexpected.*gpu_types"),
])
def test_resolve_refuses_tampering(choice, groups, match):
    with pytest.raises(ChoiceError, match=match):
        make().resolve(choice, groups)


def test_resolve_custom_not_configured_and_cpu_disabled():
    bare = GpuProfiles()
    assert bare.custom is None and bare.parsed() == [] and bare.custom_range() is None
    assert bare.resolve({"profile": "cpu"}, set()) is None
    with pytest.raises(ChoiceError, match="not offered"):
        make(custom={}).resolve({"profile": "custom", "memory": "4GiB", "cores": "20"}, set())
    with pytest.raises(ChoiceError, match="not offered"):
        make(custom=None).resolve({"profile": "custom", "memory": "4GiB", "cores": "20"},
                                  {"power"}, is_admin=True)
    with pytest.raises(ChoiceError, match="unknown GPU profile 'cpu'"):
        make(cpu_profile_name="").resolve({"profile": "cpu"}, set())
