"""Tests for hami_kernel.slice: one meaning for a slice size everywhere."""

from __future__ import annotations

import pytest

from hami_kernel.slice import (
    DeviceLimit,
    Slice,
    device_limits,
    format_memory,
    format_memory_env,
    parse_env_memory,
    parse_memory,
    parse_share,
)

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40


# --- parse_memory -----------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (1, 1),
    (8 * GIB, 8 * GIB),
    ("1048576", MIB),
    (" 1048576 ", MIB),
    ("8GiB", 8 * GIB),
    ("8Gi", 8 * GIB),
    ("8gib", 8 * GIB),
    ("8GIB", 8 * GIB),
    ("8 GiB", 8 * GIB),
    ("8192MiB", 8 * GIB),
    ("512KiB", 512 * KIB),
    ("2Ti", 2 * TIB),
    ("20480m", 20 * GIB),
    ("20480M", 20 * GIB),
    ("8G", 8 * GIB),
    ("8g", 8 * GIB),
    ("4k", 4 * KIB),
    ("1t", TIB),
    ("1.5GiB", 3 * GIB // 2),
    ("0.5g", GIB // 2),
    ("1.25 Gi", 5 * GIB // 4),
    ("1023 B", 1023),
    ("\t2 MiB\n", 2 * MIB),
])
def test_parse_memory_accepts(value: object, expected: int) -> None:
    assert parse_memory(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [
    "", "   ", "-1", "-8GiB", "0", "0GiB", "0.0g", 0, -5,
    "unlimited", "inf", "nan", "1e9", "8 GiBs", "8 GiB extra", "GiB", "8XiB",
    "1.5", "0.5 B", "8..5GiB", "+8GiB", "8,5GiB", "0x10",
    None, 1.5, 8.0, True, False, [8], b"8GiB",
])
def test_parse_memory_rejects_and_names_value(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["-1", "foo", "1.5", None])
def test_parse_memory_error_says_what_is_accepted(value: object) -> None:
    with pytest.raises(ValueError, match="GiB"):
        parse_memory(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value, suggestion", [
    ("8GB", "8GiB"), ("500MB", "500MiB"), ("1KB", "1KiB"), ("2TB", "2TiB"),
    ("8gb", "8GiB"), ("8 GB", "8GiB"),
])
def test_parse_memory_rejects_si_units_as_ambiguous(value: str, suggestion: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(value)
    message = str(info.value)
    assert repr(value) in message
    assert "ambiguous" in message
    assert suggestion in message


@pytest.mark.parametrize("value", ["1.3g", "0.1k", "1.0000001GiB"])
def test_parse_memory_rejects_fractional_bytes(value: str) -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_memory(value)


# --- format_memory ----------------------------------------------------------

@pytest.mark.parametrize("nbytes, expected", [
    (4 * GIB, "4 GiB"),
    (3 * GIB // 2, "1.5 GiB"),
    (512 * MIB, "512 MiB"),
    (768 * MIB, "768 MiB"),
    (1023, "1023 B"),
    (1, "1 B"),
    (KIB, "1 KiB"),
    (5 * GIB // 4, "1.25 GiB"),
    (2 * TIB, "2 TiB"),
    (GIB - 1, "1 GiB"),  # 1023.999... MiB rounds up into the next unit
    (GIB + 1, "1 GiB"),  # display only: tiny remainders disappear
])
def test_format_memory(nbytes: int, expected: str) -> None:
    assert format_memory(nbytes) == expected


@pytest.mark.parametrize("nbytes", [1, 1023, KIB, 1536, 512 * MIB, 3 * GIB // 2,
                                    5 * GIB // 4, 4 * GIB, 24 * GIB, 3 * TIB])
def test_format_memory_round_trips_exact_values(nbytes: int) -> None:
    assert parse_memory(format_memory(nbytes)) == nbytes


@pytest.mark.parametrize("func", [format_memory, format_memory_env])
@pytest.mark.parametrize("nbytes", [0, -1, True, 1.5, "4g", None])
def test_formatters_reject_non_positive_or_non_int(func: object, nbytes: object) -> None:
    with pytest.raises(ValueError) as info:
        func(nbytes)  # type: ignore[operator]
    assert repr(nbytes) in str(info.value)


# --- format_memory_env / parse_env_memory -----------------------------------

@pytest.mark.parametrize("nbytes, expected", [
    (4 * GIB, "4g"),
    (9 * GIB // 2, "4608m"),
    (1536, "1536"),
    (2048, "2k"),
    (1, "1"),
    (1023, "1023"),
    (KIB, "1k"),
    (MIB + KIB, "1025k"),
    (2 * TIB, "2048g"),
])
def test_format_memory_env(nbytes: int, expected: str) -> None:
    assert format_memory_env(nbytes) == expected


@pytest.mark.parametrize("nbytes", [1, 1023, 1024, 1536, MIB + 1, 3 * GIB,
                                    9 * GIB // 2, GIB - 1, 5 * TIB + 7])
def test_env_memory_round_trip_is_exact(nbytes: int) -> None:
    assert parse_env_memory(format_memory_env(nbytes)) == nbytes


@pytest.mark.parametrize("value, expected", [
    ("1048576", MIB), ("20480m", 20 * GIB), ("20480M", 20 * GIB), ("4g", 4 * GIB),
    ("4G", 4 * GIB), ("2k", 2 * KIB), ("2K", 2 * KIB), ("1t", TIB), ("1T", TIB),
])
def test_parse_env_memory_accepts_hami_syntax(value: str, expected: int) -> None:
    assert parse_env_memory(value) == expected


@pytest.mark.parametrize("value", ["0", "0g", "", " 4g", "4g ", "4 g", "4GiB", "4Gi",
                                   "4GB", "1.5g", "-4g", "4x", "g", "unlimited"])
def test_parse_env_memory_rejects_and_names_variable(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_env_memory(value, "CUDA_DEVICE_MEMORY_LIMIT_1")
    assert "CUDA_DEVICE_MEMORY_LIMIT_1" in str(info.value)
    assert repr(value) in str(info.value)


# --- parse_share ------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (30, 30), ("30", 30), ("30%", 30), (" 30 % ", 30), (1, 1), ("100%", 100), (100, 100),
])
def test_parse_share_accepts(value: object, expected: int) -> None:
    assert parse_share(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, "0", "0%", 101, "101%", -5, "-5%", "12.5%", 12.5,
                                   True, False, "", "%", "abc", "30%%", None])
def test_parse_share_rejects_with_value_and_range(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_share(value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)
    assert "1 to 100" in str(info.value)


# --- Slice construction -----------------------------------------------------

def test_slice_normalises_full_compute_share_to_none() -> None:
    assert Slice(memory=4 * GIB, cores=100).cores is None
    assert Slice(memory=4 * GIB, cores=100) == Slice(memory=4 * GIB, cores=None)


def test_slice_is_frozen() -> None:
    s = Slice(memory=GIB, cores=10)
    with pytest.raises(AttributeError):
        s.cores = 20  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [
    {"memory": 0, "cores": None},
    {"memory": -1, "cores": None},
    {"memory": "4g", "cores": None},
    {"memory": True, "cores": None},
    {"memory": None, "cores": 0},
    {"memory": None, "cores": 101},
    {"memory": None, "cores": 12.5},
    {"memory": None, "cores": None, "count": 0},
    {"memory": None, "cores": None, "count": -1},
    {"memory": None, "cores": None, "count": 1.0},
    {"memory": None, "cores": None, "count": True},
])
def test_slice_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Slice(**kwargs)


def test_slice_parse_uses_user_syntax() -> None:
    assert Slice.parse("8GiB", "25%", 2) == Slice(memory=8 * GIB, cores=25, count=2)
    assert Slice.parse(memory="512 MiB") == Slice(memory=512 * MIB, cores=None)
    assert Slice.parse(cores="100%") == Slice(memory=None, cores=None)
    assert Slice.parse(count="3") == Slice(memory=None, cores=None, count=3)
    assert Slice.parse() == Slice(memory=None, cores=None, count=1)


@pytest.mark.parametrize("kwargs, offending", [
    ({"memory": "8GB"}, "'8GB'"),
    ({"memory": "0"}, "'0'"),
    ({"cores": "0%"}, "'0%'"),
    ({"cores": "12.5%"}, "'12.5%'"),
    ({"count": "two"}, "'two'"),
    ({"count": 0}, "0"),
])
def test_slice_parse_rejects(kwargs: dict, offending: str) -> None:
    with pytest.raises(ValueError) as info:
        Slice.parse(**kwargs)
    assert offending in str(info.value)


# --- describe -----------------------------------------------------------------

@pytest.mark.parametrize("s, expected", [
    (Slice(memory=4 * GIB, cores=25), "4 GiB · 25%"),
    (Slice(memory=4 * GIB, cores=None), "4 GiB"),
    (Slice(memory=3 * GIB // 2, cores=None), "1.5 GiB"),
    (Slice(memory=8 * GIB, cores=50, count=2), "2 × 8 GiB · 50%"),
    (Slice(memory=None, cores=None), "whole GPU"),
    (Slice(memory=None, cores=None, count=2), "2 × whole GPU"),
    (Slice(memory=None, cores=30), "full VRAM · 30%"),
])
def test_describe(s: Slice, expected: str) -> None:
    assert s.describe() == expected


# --- env ------------------------------------------------------------------------

SLICES = [
    Slice(memory=4 * GIB, cores=25),
    Slice(memory=9 * GIB // 2, cores=None),
    Slice(memory=1536, cores=1),
    Slice(memory=None, cores=50, count=2),
    Slice(memory=8 * GIB, cores=99, count=4),
    Slice(memory=None, cores=None),
    Slice(memory=None, cores=None, count=3),
]


def test_to_env_uses_hami_names_and_exact_values() -> None:
    assert Slice(memory=9 * GIB // 2, cores=30).to_env() == {
        "CUDA_DEVICE_MEMORY_LIMIT": "4608m", "CUDA_DEVICE_SM_LIMIT": "30"}


def test_to_env_omits_unlimited_keys() -> None:
    assert Slice(memory=None, cores=None).to_env() == {}
    assert Slice(memory=GIB, cores=None).to_env() == {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}
    assert Slice(memory=None, cores=5).to_env() == {"CUDA_DEVICE_SM_LIMIT": "5"}


@pytest.mark.parametrize("s", SLICES, ids=lambda s: s.describe())
def test_env_round_trip(s: Slice) -> None:
    assert Slice.from_env(s.to_env(), count=s.count) == s


@pytest.mark.parametrize("sm, expected", [("0", None), ("100", None), ("1", 1)])
def test_from_env_sm_limit_zero_and_hundred_mean_no_cap(sm: str, expected: int | None) -> None:
    assert Slice.from_env({"CUDA_DEVICE_SM_LIMIT": sm}).cores == expected


@pytest.mark.parametrize("variable", ["CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT"])
def test_from_env_empty_string_is_malformed_not_unlimited(variable: str) -> None:
    # As in libvgpu: a variable set to nothing is a mistake, never "no limit".
    with pytest.raises(ValueError, match=f"{variable}='' is malformed"):
        Slice.from_env({variable: ""})


def test_from_env_ignores_unrelated_variables() -> None:
    env = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_MEMORY_LIMIT": "2g"}
    assert Slice.from_env(env) == Slice(memory=2 * GIB, cores=None)


def test_from_env_infers_count_from_per_device_variables() -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT_0": "4096m", "CUDA_DEVICE_MEMORY_LIMIT_1": "4g",
           "CUDA_DEVICE_SM_LIMIT": "20"}
    assert Slice.from_env(env) == Slice(memory=4 * GIB, cores=20, count=2)


def test_from_env_empty_per_device_variable_is_malformed() -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT_0": "1g", "CUDA_DEVICE_MEMORY_LIMIT_5": ""}
    with pytest.raises(ValueError, match="CUDA_DEVICE_MEMORY_LIMIT_5='' is malformed"):
        Slice.from_env(env)


def test_from_env_per_device_agreeing_with_global() -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "2g", "CUDA_DEVICE_MEMORY_LIMIT_1": "2048m"}
    assert Slice.from_env(env, count=3) == Slice(memory=2 * GIB, cores=None, count=3)


@pytest.mark.parametrize("env, count", [
    ({"CUDA_DEVICE_MEMORY_LIMIT_0": "2g", "CUDA_DEVICE_MEMORY_LIMIT_1": "4g"}, None),
    ({"CUDA_DEVICE_MEMORY_LIMIT": "2g", "CUDA_DEVICE_MEMORY_LIMIT_1": "4g"}, 2),
    ({"CUDA_DEVICE_MEMORY_LIMIT_0": "2g"}, 2),  # device 1 has no cap at all
    ({"CUDA_DEVICE_SM_LIMIT": "30", "CUDA_DEVICE_SM_LIMIT_1": "60"}, None),
])
def test_from_env_rejects_non_uniform_limits(env: dict, count: int | None) -> None:
    with pytest.raises(ValueError, match="device_limits"):
        Slice.from_env(env, count=count)


@pytest.mark.parametrize("env, variable, value", [
    ({"CUDA_DEVICE_MEMORY_LIMIT": "0"}, "CUDA_DEVICE_MEMORY_LIMIT", "0"),
    ({"CUDA_DEVICE_MEMORY_LIMIT": "4GiB"}, "CUDA_DEVICE_MEMORY_LIMIT", "4GiB"),
    ({"CUDA_DEVICE_MEMORY_LIMIT_0": "lots"}, "CUDA_DEVICE_MEMORY_LIMIT_0", "lots"),
    ({"CUDA_DEVICE_SM_LIMIT": "101"}, "CUDA_DEVICE_SM_LIMIT", "101"),
    ({"CUDA_DEVICE_SM_LIMIT": "-1"}, "CUDA_DEVICE_SM_LIMIT", "-1"),
    ({"CUDA_DEVICE_SM_LIMIT": "50%"}, "CUDA_DEVICE_SM_LIMIT", "50%"),
    ({"CUDA_DEVICE_SM_LIMIT": "12.5"}, "CUDA_DEVICE_SM_LIMIT", "12.5"),
    ({"CUDA_DEVICE_SM_LIMIT_0": "x"}, "CUDA_DEVICE_SM_LIMIT_0", "x"),
])
def test_from_env_malformed_values_name_variable_and_value(
        env: dict, variable: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        Slice.from_env(env)
    assert variable in str(info.value)
    assert repr(value) in str(info.value)


# --- device_limits --------------------------------------------------------------

def test_device_limits_per_device_overrides_global() -> None:
    env = {
        "CUDA_DEVICE_MEMORY_LIMIT": "4g",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "2g",
        "CUDA_DEVICE_SM_LIMIT": "50",
        "CUDA_DEVICE_SM_LIMIT_2": "0",  # explicit "no cap" beats the global 50
    }
    assert device_limits(env, 4) == [
        DeviceLimit(memory=4 * GIB, cores=50),
        DeviceLimit(memory=2 * GIB, cores=50),
        DeviceLimit(memory=4 * GIB, cores=None),
        DeviceLimit(memory=4 * GIB, cores=50),
    ]


def test_device_limits_without_any_limits() -> None:
    assert device_limits({}, 2) == [DeviceLimit(None, None), DeviceLimit(None, None)]
    assert device_limits({"CUDA_DEVICE_MEMORY_LIMIT_0": "1g"}, 0) == []


@pytest.mark.parametrize("count", [-1, 1.0, None, True])
def test_device_limits_rejects_bad_count(count: object) -> None:
    with pytest.raises(ValueError):
        device_limits({}, count)  # type: ignore[arg-type]


# --- pod resources --------------------------------------------------------------

def test_to_pod_resources_uses_hami_resource_names() -> None:
    assert Slice(memory=4 * GIB, cores=25, count=2).to_pod_resources() == {
        "nvidia.com/gpu": "2", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "25"}


def test_to_pod_resources_omits_unlimited_keys() -> None:
    assert Slice(memory=None, cores=None).to_pod_resources() == {"nvidia.com/gpu": "1"}
    assert Slice(memory=None, cores=10).to_pod_resources() == {
        "nvidia.com/gpu": "1", "nvidia.com/gpucores": "10"}


def test_to_pod_resources_other_vendor_prefix() -> None:
    assert Slice(memory=MIB, cores=None).to_pod_resources(vendor="example.com") == {
        "example.com/gpu": "1", "example.com/gpumem": "1"}


@pytest.mark.parametrize("memory", [MIB + 1, 1536, 3 * MIB // 2])
def test_to_pod_resources_never_rounds_memory(memory: int) -> None:
    with pytest.raises(ValueError, match="MiB"):
        Slice(memory=memory, cores=None).to_pod_resources()


@pytest.mark.parametrize("s", [s for s in SLICES if s.memory is None or s.memory % MIB == 0],
                         ids=lambda s: s.describe())
@pytest.mark.parametrize("vendor", ["nvidia.com", "example.com"])
def test_pod_resources_round_trip(s: Slice, vendor: str) -> None:
    assert Slice.from_pod_resources(s.to_pod_resources(vendor), vendor) == s


def test_from_pod_resources_accepts_ints_and_ignores_other_resources() -> None:
    resources = {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000,
                 "nvidia.com/gpucores": 100}
    assert Slice.from_pod_resources(resources) == Slice(memory=3000 * MIB, cores=None)


@pytest.mark.parametrize("resources, fragment", [
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"}, "gpumem-percentage"),
    ({"nvidia.com/gpumem": "1024"}, "nvidia.com/gpu"),
    ({"nvidia.com/gpu": "0"}, "'0'"),
    ({"nvidia.com/gpu": "one"}, "'one'"),
    ({"nvidia.com/gpu": True}, "True"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "0"}, "'0'"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4Gi"}, "'4Gi'"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "-5"}, "'-5'"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "0"}, "'0'"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "150"}, "'150'"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "12.5"}, "'12.5'"),
])
def test_from_pod_resources_rejects(resources: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        Slice.from_pod_resources(resources)
    assert fragment in str(info.value)


def test_from_pod_resources_only_reads_its_vendor() -> None:
    resources = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}
    with pytest.raises(ValueError, match="example.com/gpu"):
        Slice.from_pod_resources(resources, vendor="example.com")
