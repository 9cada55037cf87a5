"""Configuration: parsing, kubelet's validation and the checks against the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_plugin.engine.config import Config, ReservedMemory
from nri_plugin.engine.state import POLICY_NONE, POLICY_STATIC
from nri_plugin.engine.topology import Topology
from nri_plugin.errors import ConfigError, InputError
from nri_plugin.inputs.config import (
    load_config_file,
    node_allocatable_reservation,
    parse_config,
    parse_reserved_memory_flag,
    validate_for_machine,
    validate_reserved_memory,
)
from nri_plugin.inputs.topology import topology_from_mapping

GI = 1 << 30
MI = 1 << 20

# Two nodes of 10Gi; node 0 has 1Gi of 2Mi pages and 2Gi of 1Gi pages.
MACHINE = topology_from_mapping(
    {
        "nodes": [
            {"id": 0, "cpus": "0-3", "memory": "10Gi", "hugepages": {"2Mi": "1Gi", "1Gi": "2Gi"}},
            {"id": 1, "cpus": "4-7", "memory": "10Gi"},
        ],
        "distances": [[10, 21], [21, 10]],
    }
)
NO_DISTANCES = topology_from_mapping(
    {"nodes": [{"id": 0, "memory": "10Gi"}, {"id": 1, "memory": "10Gi"}]}
)


def many_nodes(count: int) -> Topology:
    return topology_from_mapping(
        {"nodes": [{"id": i, "cpus": str(i), "memory": "4Gi"} for i in range(count)]}
    )


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    message = str(err.value)
    assert "\n" not in message
    return message


def machine_error(config: Config, topology: Topology = MACHINE) -> str:
    with pytest.raises(ConfigError) as err:
        validate_for_machine(config, topology)
    message = str(err.value)
    assert "\n" not in message
    return message


# -- parse_config: scalar keys ----------------------------------------------


def test_defaults() -> None:
    assert parse_config(None) == Config()
    assert parse_config({}) == Config(
        policy=POLICY_STATIC,
        topology_manager_policy="none",
        topology_manager_scope="container",
        prefer_closest_numa_nodes=False,
        max_allowable_numa_nodes=8,
        reserved_memory=(),
        kube_reserved=None,
        system_reserved=None,
        eviction_hard=None,
        memory_drift_tolerance=64 * MI,
    )


@pytest.mark.parametrize(
    ("text", "name"),
    [("static", POLICY_STATIC), ("Static", POLICY_STATIC), ("NONE", POLICY_NONE), ("none", "None")],
)
def test_policy_is_case_insensitive(text: str, name: str) -> None:
    assert parse_config({"policy": text}).policy == name


def test_unknown_policy() -> None:
    assert error_of({"policy": "BestEffort"}).startswith(
        'config.policy: unknown policy: "BestEffort"'
    )
    assert error_of({"policy": 1}) == "config.policy: expected a string, got the number 1"


def test_topology_manager_policy_and_scope() -> None:
    config = parse_config({"topologyManagerPolicy": "restricted", "topologyManagerScope": "pod"})
    assert config.topology_manager_policy == "restricted"
    assert config.topology_manager_scope == "pod"
    for policy in ("none", "best-effort", "restricted", "single-numa-node"):
        assert parse_config({"topologyManagerPolicy": policy}).topology_manager_policy == policy


def test_unknown_topology_manager_policy_and_scope() -> None:
    assert error_of({"topologyManagerPolicy": "Single-NUMA-node"}).startswith(
        'config.topologyManagerPolicy: unknown policy: "Single-NUMA-node"'
    )
    assert error_of({"topologyManagerScope": "node"}).startswith(
        'config.topologyManagerScope: unknown scope: "node"'
    )


def test_unknown_top_level_key_is_named() -> None:
    assert error_of({"reservedMemroy": []}).startswith(
        'config: unknown key "reservedMemroy" (known: policy, '
    )
    assert error_of({"reservedMemroy": []}).endswith('did you mean "reservedMemory"?')
    assert error_of(["policy"]) == "config: expected a mapping, got a list of 1 item"


def test_memory_drift_tolerance() -> None:
    assert parse_config({"memoryDriftTolerance": "128Mi"}).memory_drift_tolerance == 128 * MI
    assert parse_config({"memoryDriftTolerance": 0}).memory_drift_tolerance == 0
    assert error_of({"memoryDriftTolerance": "lots"}) == (
        'config.memoryDriftTolerance: "lots" is not auto, off or a quantity such as "128Mi"'
    )


def drift(value: object) -> tuple[int, str | None]:
    config = parse_config({"memoryManagerPolicyOptions": {"memory-drift-tolerance": value}})
    return config.memory_drift_tolerance, config.memory_drift_tolerance_option


def test_memory_drift_tolerance_as_kubelet_spells_it() -> None:
    # KEP-6232: memoryManagerPolicyOptions: {memory-drift-tolerance: auto | off | <quantity>}
    assert drift("128Mi") == (128 * MI, "128Mi")
    assert drift("off") == (0, "off")
    assert drift(False) == (0, "off")  # a bare `off` in YAML 1.1
    assert drift("auto") == (0, "auto")  # resolved at start, exact until then
    assert drift(0) == (0, "0")
    # not configured: the plugin's own default
    assert (
        parse_config({}).memory_drift_tolerance,
        parse_config({}).memory_drift_tolerance_option,
    ) == (
        64 * MI,
        None,
    )
    # the older key is the same setting
    alias = parse_config({"memoryDriftTolerance": "auto"})
    assert (alias.memory_drift_tolerance, alias.memory_drift_tolerance_option) == (0, "auto")


def test_memory_drift_tolerance_bad_values() -> None:
    where = "config.memoryManagerPolicyOptions.memory-drift-tolerance"
    assert error_of({"memoryManagerPolicyOptions": {"memory-drift-tolerance": True}}) == (
        f'{where}: expected auto, off or a quantity such as "128Mi", got the boolean true'
    )
    assert error_of({"memoryManagerPolicyOptions": {"memory-drift-tolerance": "on"}}) == (
        f'{where}: "on" is not auto, off or a quantity such as "128Mi"'
    )
    assert error_of({"memoryManagerPolicyOptions": {"memory-drift-tolerance": "-1Mi"}}) == (
        f'{where}: "-1Mi" must not be negative'
    )
    assert error_of({"memoryManagerPolicyOptions": "auto"}) == (
        "config.memoryManagerPolicyOptions: expected a mapping option -> value, got the string"
        ' "auto"'
    )


def test_memory_drift_tolerance_and_its_older_name_together_are_one_error() -> None:
    assert error_of(
        {
            "memoryDriftTolerance": "64Mi",
            "memoryManagerPolicyOptions": {"memory-drift-tolerance": "64Mi"},
        }
    ) == (
        "config: memoryDriftTolerance and memoryManagerPolicyOptions.memory-drift-tolerance are"
        " both set; memoryDriftTolerance is the older name of the same setting: keep one"
    )


def test_unknown_options_of_our_config_are_errors_with_a_suggestion() -> None:
    assert error_of({"memoryManagerPolicyOptions": {"memory-drift-tolerence": "auto"}}) == (
        "config.memoryManagerPolicyOptions: unknown Memory Manager Policy option:"
        ' "memory-drift-tolerence" (known: memory-drift-tolerance); did you mean'
        ' "memory-drift-tolerance"?'
    )
    assert error_of({"topologyManagerPolicyOptions": {"prefer-closest-numa-node": "true"}}) == (
        "config.topologyManagerPolicyOptions: unknown Topology Manager Policy option:"
        ' "prefer-closest-numa-node" (known: prefer-closest-numa-nodes,'
        ' max-allowable-numa-nodes); did you mean "prefer-closest-numa-nodes"?'
    )
    # options of newer kubelets are not ours either (open KEPs 6007 and 5726)
    for option in ("numa-allocation-strategy", "restrict-to-cpu-numa-nodes"):
        assert "unknown Topology Manager Policy option" in error_of(
            {"topologyManagerPolicyOptions": {option: "true"}}
        )


def test_memory_drift_beyond_tolerance() -> None:
    assert parse_config({}).memory_drift_beyond_tolerance == "refuse"
    config = parse_config({"memoryDriftBeyondTolerance": "accept-if-fits"})
    assert config.memory_drift_beyond_tolerance == "accept-if-fits"
    assert error_of({"memoryDriftBeyondTolerance": "accept"}) == (
        'config.memoryDriftBeyondTolerance: unknown choice: "accept" (expected refuse,'
        " accept-if-fits)"
    )


# -- topology manager policy options -----------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("1", True), ("t", True), (True, True), ("false", False),
     ("0", False), (False, False), ("F", False)],
)  # fmt: skip
def test_prefer_closest_accepts_go_booleans(value: object, expected: bool) -> None:
    config = parse_config({"topologyManagerPolicyOptions": {"prefer-closest-numa-nodes": value}})
    assert config.prefer_closest_numa_nodes is expected


def test_prefer_closest_bad_value() -> None:
    message = error_of({"topologyManagerPolicyOptions": {"prefer-closest-numa-nodes": "yes"}})
    assert message == (
        "config.topologyManagerPolicyOptions.prefer-closest-numa-nodes: bad value for option"
        ' "prefer-closest-numa-nodes": "yes" is not a boolean'
    )


@pytest.mark.parametrize(("value", "expected"), [("8", 8), ("16", 16), (64, 64), ("+9", 9)])
def test_max_allowable_numa_nodes(value: object, expected: int) -> None:
    config = parse_config({"topologyManagerPolicyOptions": {"max-allowable-numa-nodes": value}})
    assert config.max_allowable_numa_nodes == expected


def test_max_allowable_numa_nodes_may_only_raise_the_limit() -> None:
    message = error_of({"topologyManagerPolicyOptions": {"max-allowable-numa-nodes": "4"}})
    assert message == (
        'config.topologyManagerPolicyOptions.max-allowable-numa-nodes: "4" is too small: the'
        ' minimum value of "max-allowable-numa-nodes" should not be less than 8'
    )


@pytest.mark.parametrize("value", ["eight", "8.0", " 8", "1_6", True])
def test_max_allowable_numa_nodes_must_be_an_integer(value: object) -> None:
    message = error_of({"topologyManagerPolicyOptions": {"max-allowable-numa-nodes": value}})
    assert message.startswith(
        "config.topologyManagerPolicyOptions.max-allowable-numa-nodes: bad value for option"
    )


def test_unknown_policy_option() -> None:
    message = error_of({"topologyManagerPolicyOptions": {"prefer-closest-numa-node": "true"}})
    assert message.startswith(
        "config.topologyManagerPolicyOptions: unknown Topology Manager Policy option:"
        ' "prefer-closest-numa-node"'
    )


# -- reservedMemory: parsing ---------------------------------------------------


def test_reserved_memory_kubelet_configuration_form() -> None:
    config = parse_config(
        {
            "reservedMemory": [
                {"numaNode": 0, "limits": {"memory": "1Gi", "hugepages-1Gi": "2Gi"}},
                {"numaNode": 1, "limits": {"memory": 536870912}},
            ]
        }
    )
    assert config.reserved_memory == (
        ReservedMemory(0, "memory", GI),
        ReservedMemory(0, "hugepages-1Gi", 2 * GI),
        ReservedMemory(1, "memory", 512 * MI),
    )
    assert config.reserved(0, "memory") == GI
    assert config.reserved(0, "hugepages-1Gi") == 2 * GI
    assert config.reserved(1, "hugepages-1Gi") == 0
    assert config.reserved(7, "memory") == 0


def test_reserved_memory_flag_form() -> None:
    expected = (
        ReservedMemory(0, "memory", GI),
        ReservedMemory(0, "hugepages-1Gi", 2 * GI),
        ReservedMemory(1, "memory", 2 * GI),
        ReservedMemory(1, "hugepages-2Mi", 4 * MI),
    )
    both = parse_config(
        {"reservedMemory": ["0:memory=1Gi,hugepages-1Gi=2Gi;1:memory=2Gi", "1:hugepages-2Mi=4Mi"]}
    )
    assert both.reserved_memory == expected
    single = parse_config({"reservedMemory": "0:memory=1Gi,hugepages-1Gi=2Gi;1:memory=2Gi"})
    assert single.reserved_memory == expected[:3]


def test_reserved_memory_forms_can_mix() -> None:
    config = parse_config(
        {"reservedMemory": ["0:memory=1Gi", {"numaNode": 1, "limits": {"memory": "1Gi"}}]}
    )
    assert config.reserved_memory == (
        ReservedMemory(0, "memory", GI),
        ReservedMemory(1, "memory", GI),
    )


def test_parse_reserved_memory_flag() -> None:
    assert parse_reserved_memory_flag("") == []
    assert parse_reserved_memory_flag("0:memory=1Gi,hugepages-1Gi=1Gi;1:memory=1Gi") == [
        ReservedMemory(0, "memory", GI),
        ReservedMemory(0, "hugepages-1Gi", GI),
        ReservedMemory(1, "memory", GI),
    ]
    assert parse_reserved_memory_flag("+1:memory=1.5Gi") == [
        ReservedMemory(1, "memory", 3 * GI // 2)
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "0",
            "the reserved memory has incorrect format, expected"
            " numaNodeID:type=quantity[,type=quantity...], got 0",
        ),
        (
            "0:memory=1Gi:2",
            "the reserved memory has incorrect format, expected"
            " numaNodeID:type=quantity[,type=quantity...], got 0:memory=1Gi:2",
        ),
        (
            "0:memory=1Gi;",
            "the reserved memory has incorrect format, expected"
            " numaNodeID:type=quantity[,type=quantity...], got ",
        ),
        ("a:memory=1Gi", "failed to convert the NUMA node ID, exptected integer, got a"),
        (" 0:memory=1Gi", "failed to convert the NUMA node ID, exptected integer, got  0"),
        ("0:", "the reserved limit has incorrect value, expected type=quantatity, got "),
        (
            "0:memory",
            "the reserved limit has incorrect value, expected type=quantatity, got memory",
        ),
        (
            "0:memory=1=2",
            "the reserved limit has incorrect value, expected type=quantatity, got memory=1=2",
        ),
        ("0:cpu=1", 'memory type conversion error, unknown type: "cpu"'),
        ("0:memory=", "failed to parse the quantatity, expected quantatity, got "),
        ("0:memory=1Be", "failed to parse the quantatity, expected quantatity, got 1Be"),
    ],
)
def test_flag_parse_errors_are_kubelets(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reserved_memory_flag(text)
    assert str(err.value) == message


def test_flag_values_must_be_whole_non_negative_bytes() -> None:
    with pytest.raises(ConfigError, match=r'NUMA node 0: "0\.5" is not a whole number of bytes'):
        parse_reserved_memory_flag("0:memory=0.5")
    with pytest.raises(ConfigError, match=r'"-1Gi" must not be negative'):
        parse_reserved_memory_flag("0:memory=-1Gi")


def test_flag_errors_in_config_name_the_list_item() -> None:
    assert error_of({"reservedMemory": ["0:memory=1Gi", "x:memory=1Gi"]}) == (
        "config.reservedMemory[1]: failed to convert the NUMA node ID, exptected integer, got x"
    )
    assert error_of({"reservedMemory": "0:cpu=1"}) == (
        'config.reservedMemory: memory type conversion error, unknown type: "cpu"'
    )


def test_flag_error_text_stays_on_one_line() -> None:
    assert error_of({"reservedMemory": "0\n:memory=1Gi"}).endswith(r"got 0\n")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"numaNode": 0, "limit": {"memory": "1Gi"}},
            'config.reservedMemory[0]: unknown key "limit" (known: numaNode, limits); did you'
            ' mean "limits"?',
        ),
        ({"limits": {"memory": "1Gi"}}, 'config.reservedMemory[0]: missing key "numaNode"'),
        (
            {"numaNode": "0", "limits": {"memory": "1Gi"}},
            'config.reservedMemory[0].numaNode: expected an integer, got the string "0"',
        ),
        (
            {"numaNode": 0},
            "config.reservedMemory[0].limits: expected a mapping type -> quantity, got null",
        ),
        (
            {"numaNode": 0, "limits": {"memory": "12XB"}},
            'config.reservedMemory[0].limits.memory: "12XB" is not a valid quantity',
        ),
        (
            {"numaNode": 0, "limits": {"memory": "1m"}},
            'config.reservedMemory[0].limits.memory: "1m" is not a whole number of bytes',
        ),
        (
            {"numaNode": 0, "limits": {"memory": "9Ei"}},
            'config.reservedMemory[0].limits.memory: "9Ei" cannot be represented as int64',
        ),
        (
            {"numaNode": 0, "limits": {"cpu": "1"}},
            'config.reservedMemory[0].limits: invalid configuration: the limit type "cpu" for'
            " NUMA node 0 is not supported, only [memory hugepages-<HugePageSize>] is accepted",
        ),
        (5, "config.reservedMemory[0]: expected {numaNode, limits} or a string such as"),
    ],
)
def test_kubelet_configuration_item_errors(item: object, message: str) -> None:
    assert error_of({"reservedMemory": [item]}).startswith(message)


def test_reserved_memory_of_wrong_type() -> None:
    assert error_of({"reservedMemory": {"numaNode": 0}}).startswith(
        "config.reservedMemory: expected a list of {numaNode, limits} or of --reserved-memory"
    )


# -- reservedMemory: KubeletConfiguration validation ---------------------------


def test_zero_reservation_is_refused() -> None:
    expected = (
        "config.reservedMemory: invalid configuration: reserved memory may not be zero for"
        ' NUMA node 1 and resource "hugepages-2Mi"'
    )
    assert error_of({"reservedMemory": ["1:hugepages-2Mi=0"]}) == expected
    assert (
        error_of({"reservedMemory": [{"numaNode": 1, "limits": {"hugepages-2Mi": "0Gi"}}]})
        == expected
    )


@pytest.mark.parametrize(
    "reserved",
    [
        ["0:memory=1Gi", "0:memory=2Gi"],  # two flag occurrences
        ["0:memory=1Gi;0:memory=2Gi"],  # two parts of one occurrence
        ["0:memory=1Gi,memory=2Gi"],  # one part
        [{"numaNode": 0, "limits": {"memory": "1Gi"}}, {"numaNode": 0, "limits": {"memory": 1}}],
        ["0:memory=1Gi", {"numaNode": 0, "limits": {"memory": "1Gi"}}],
    ],
)
def test_duplicate_reservation_is_refused(reserved: list[object]) -> None:
    assert error_of({"reservedMemory": reserved}) == (
        "config.reservedMemory: invalid configuration: the reserved memory has a duplicate value"
        ' for NUMA node 0 and resource "memory"'
    )


def test_same_type_on_other_nodes_is_no_duplicate() -> None:
    config = parse_config({"reservedMemory": ["0:memory=1Gi", "1:memory=1Gi"]})
    assert len(config.reserved_memory) == 2


def test_validate_reserved_memory_for_flag_callers() -> None:
    validate_reserved_memory([ReservedMemory(0, "memory", 1), ReservedMemory(1, "memory", 1)])
    with pytest.raises(ConfigError, match=r'the limit type "cpu" for NUMA node 2 is not supp'):
        validate_reserved_memory([ReservedMemory(2, "cpu", 1)])
    # kubelet's hugepages check is a prefix check
    validate_reserved_memory([ReservedMemory(0, "hugepages-", 1)])


# -- kubeReserved / systemReserved / evictionHard ------------------------------


def test_reserved_resources() -> None:
    config = parse_config(
        {
            "kubeReserved": {
                "cpu": "500m",
                "memory": "4Gi",
                "ephemeral-storage": "1Gi",
                "pid": 100,
            },
            "systemReserved": {"memory": "1Gi", "hugepages-2Mi": "4Mi"},
            "evictionHard": {"memory.available": "10%", "nodefs.available": "5%"},
        }
    )
    assert config.kube_reserved == {
        "cpu": 500,
        "memory": 4 * GI,
        "ephemeral-storage": GI,
        "pid": 100,
    }
    assert config.system_reserved == {"memory": GI, "hugepages-2Mi": 4 * MI}
    assert config.eviction_hard == {"memory.available": "10%", "nodefs.available": "5%"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"kubeReserved": {"gpu": 1}},
            'config.kubeReserved: cannot reserve "gpu" resource (only cpu, memory,',
        ),
        (
            {"systemReserved": {"memory": "-1Gi"}},
            'config.systemReserved.memory: "-1Gi" must not be negative',
        ),
        ({"kubeReserved": {"cpu": "x"}}, 'config.kubeReserved.cpu: "x" is not a valid quantity'),
        ({"kubeReserved": "4Gi"}, "config.kubeReserved: expected a mapping resource -> quantity"),
        (
            {"evictionHard": {"memory.avialable": "1Gi"}},
            'config.evictionHard: unsupported eviction signal "memory.avialable"',
        ),
        (
            {"evictionHard": {"memory.available": "120%"}},
            "config.evictionHard.memory.available: eviction percentage threshold 120% must be"
            " <= 100%",
        ),
        (
            {"evictionHard": {"memory.available": "x%"}},
            'config.evictionHard.memory.available: "x%" is not a valid percentage',
        ),
        (
            {"evictionHard": {"memory.available": "100MB"}},
            'config.evictionHard.memory.available: "100MB" is not a valid quantity',
        ),
        (
            {"evictionHard": {"memory.available": ["100Mi"]}},
            'config.evictionHard.memory.available: expected a threshold such as "100Mi"',
        ),
    ],
)
def test_reserved_resources_errors(data: object, message: str) -> None:
    assert error_of(data).startswith(message)


# -- validate_for_machine ---------------------------------------------------------


def sum_checked(reserved: list[str], **extra: object) -> Config:
    return parse_config(
        {
            "kubeReserved": {"memory": "4Gi"},
            "systemReserved": {"memory": "1Gi"},
            "reservedMemory": reserved,
            **extra,
        }
    )


def test_worked_example_is_valid() -> None:
    # 4Gi + 1Gi + the default 100Mi hard eviction = 5220Mi = 3Gi + 2148Mi
    validate_for_machine(sum_checked(["0:memory=3Gi", "1:memory=2148Mi"]), MACHINE)
    validate_for_machine(sum_checked(["0:memory=3Gi;1:memory=2148Mi"]), MACHINE)


@pytest.mark.parametrize(
    ("reserved", "total"),
    [
        (["0:memory=3Gi", "1:memory=2Gi"], "5Gi"),
        (["0:memory=3Gi", "1:memory=2149Mi"], "5221Mi"),
        (["0:memory=2Gi", "1:memory=2148Mi"], "4196Mi"),
        (["0:memory=3Gi"], "3Gi"),
    ],
)
def test_worked_example_changed_fails_naming_both_sums(reserved: list[str], total: str) -> None:
    assert machine_error(sum_checked(reserved)) == (
        f'config.reservedMemory: the total amount "{total}" of type "memory" is not equal to'
        ' the value "5220Mi" determined by Node Allocatable feature'
    )


def test_changing_the_node_allocatable_side_fails_too() -> None:
    config = parse_config(
        {
            "kubeReserved": {"memory": "4Gi"},
            "systemReserved": {"memory": "2Gi"},
            "reservedMemory": ["0:memory=3Gi", "1:memory=2148Mi"],
        }
    )
    assert '"5220Mi" of type "memory" is not equal to the value "6244Mi"' in machine_error(config)


def test_sum_check_absent_parts() -> None:
    # only evictionHard given: kube/system reserved count 0
    validate_for_machine(
        parse_config(
            {"evictionHard": {"memory.available": "1Gi"}, "reservedMemory": ["1:memory=1Gi"]}
        ),
        MACHINE,
    )
    # evictionHard given without memory.available: it contributes nothing
    validate_for_machine(
        sum_checked(["0:memory=5Gi"], evictionHard={"nodefs.available": "10%"}), MACHINE
    )
    # no part given at all: no sum check
    validate_for_machine(parse_config({"reservedMemory": ["0:memory=1Mi"]}), MACHINE)


def test_eviction_percentage_is_kubelets_float_arithmetic() -> None:
    config = parse_config(
        {"evictionHard": {"memory.available": "10%"}, "reservedMemory": ["0:memory=2Gi"]}
    )
    # 10% of the machine's 20Gi, as kubelet computes it: float32(10)/100 times the
    # capacity, truncated; float32 0.1 is slightly above 0.1, hence 32 bytes more.
    assert node_allocatable_reservation(config, MACHINE) == {"memory": 2 * GI + 32}
    assert machine_error(config) == (
        'config.reservedMemory: the total amount "2Gi" of type "memory" is not equal to the value'
        ' "2147483680" determined by Node Allocatable feature'
    )
    validate_for_machine(
        parse_config(
            {"evictionHard": {"memory.available": "10%"}, "reservedMemory": ["0:memory=2147483680"]}
        ),
        MACHINE,
    )


def test_sum_check_covers_hugepages() -> None:
    base = {"kubeReserved": {"memory": "1Gi"}, "evictionHard": {"memory.available": "0"}}
    # a hugepages reservation that Node Allocatable does not withhold
    config = parse_config({**base, "reservedMemory": ["0:memory=1Gi,hugepages-2Mi=4Mi"]})
    assert machine_error(config) == (
        'config.reservedMemory: the total amount "4Mi" of type "hugepages-2Mi" is not equal to'
        ' the value "0" determined by Node Allocatable feature'
    )
    # and one that it withholds but nobody reserves
    config = parse_config(
        {**base, "systemReserved": {"hugepages-2Mi": "4Mi"}, "reservedMemory": ["0:memory=1Gi"]}
    )
    assert '"0" of type "hugepages-2Mi" is not equal to the value "4Mi"' in machine_error(config)
    validate_for_machine(
        parse_config(
            {
                **base,
                "systemReserved": {"hugepages-2Mi": "4Mi"},
                "reservedMemory": ["0:memory=1Gi,hugepages-2Mi=4Mi"],
            }
        ),
        MACHINE,
    )


def test_missing_numa_node_names_id_and_nodes() -> None:
    config = parse_config({"reservedMemory": ["0:memory=1Gi", "3:memory=1Gi"]})
    assert machine_error(config) == (
        "config.reservedMemory: the reserved memory configuration references a NUMA node 3 that"
        " does not exist on this machine (nodes: 0,1)"
    )


def test_missing_numa_node_is_reported_before_the_sum() -> None:
    assert "NUMA node 5 that does not exist" in machine_error(sum_checked(["5:memory=1Gi"]))


def test_hugepage_size_the_machine_lacks() -> None:
    config = parse_config({"reservedMemory": ["0:memory=1Gi,hugepages-64Ki=64Ki"]})
    assert machine_error(config) == (
        'config.reservedMemory: NUMA node 0 reserves "hugepages-64Ki", a hugepage size this'
        " machine does not have (sizes: hugepages-2Mi, hugepages-1Gi)"
    )
    config = parse_config({"reservedMemory": ["0:memory=1Gi,hugepages-2048Ki=2Mi"]})
    assert machine_error(config).endswith(
        '(sizes: hugepages-2Mi, hugepages-1Gi); write it as "hugepages-2Mi"'
    )
    config = parse_config({"reservedMemory": ["0:memory=1Gi,hugepages-2Mi=2Mi"]})
    assert machine_error(config, NO_DISTANCES).endswith("(sizes: none)")


def test_static_needs_some_reserved_memory() -> None:
    message = "config.reservedMemory: [memorymanager] you should specify the system reserved memory"
    assert machine_error(parse_config({})) == message
    assert machine_error(parse_config({"reservedMemory": ["0:hugepages-2Mi=2Mi"]})) == message
    # one node is enough
    validate_for_machine(parse_config({"reservedMemory": "1:memory=1"}), MACHINE)


def test_reservation_larger_than_the_node() -> None:
    # node 0: 10Gi of memory of which 3Gi are hugepage pools
    config = parse_config({"reservedMemory": ["0:memory=8Gi"]})
    assert machine_error(config) == (
        'config.reservedMemory: NUMA node 0 reserves "8Gi" of "memory" but the node has only'
        ' "7Gi" (memory 10Gi minus hugepages 3Gi)'
    )
    validate_for_machine(parse_config({"reservedMemory": ["0:memory=7Gi"]}), MACHINE)
    config = parse_config({"reservedMemory": ["0:memory=1Gi,hugepages-1Gi=3Gi"]})
    assert machine_error(config) == (
        'config.reservedMemory: NUMA node 0 reserves "3Gi" of "hugepages-1Gi" but the node has'
        ' only "2Gi"'
    )
    # node 1 lists the 1Gi size with no pages
    config = parse_config({"reservedMemory": ["0:memory=1Gi", "1:hugepages-1Gi=1Gi"]})
    assert 'NUMA node 1 reserves "1Gi" of "hugepages-1Gi" but the node has only "0"' in (
        machine_error(config)
    )


def test_none_policy_skips_memory_manager_checks() -> None:
    validate_for_machine(parse_config({"policy": "none"}), MACHINE)
    validate_for_machine(
        parse_config({"policy": "none", "reservedMemory": ["9:memory=100Gi"]}), MACHINE
    )


def test_more_numa_nodes_than_allowed() -> None:
    config = parse_config({"policy": "none", "topologyManagerPolicy": "best-effort"})
    message = machine_error(config, many_nodes(9))
    assert message == (
        "config.topologyManagerPolicyOptions.max-allowable-numa-nodes: the machine has 9 NUMA"
        " nodes, more than max-allowable-numa-nodes 8 (kubelet: unsupported on machines with"
        " more than 8 NUMA Nodes)"
    )
    validate_for_machine(config, many_nodes(8))
    raised = parse_config(
        {
            "policy": "none",
            "topologyManagerPolicy": "single-numa-node",
            "topologyManagerPolicyOptions": {"max-allowable-numa-nodes": "16"},
        }
    )
    validate_for_machine(raised, many_nodes(16))
    assert "the machine has 17 NUMA nodes, more than max-allowable-numa-nodes 16" in (
        machine_error(raised, many_nodes(17))
    )


def test_numa_node_limit_only_applies_with_a_topology_policy() -> None:
    validate_for_machine(parse_config({"policy": "none"}), many_nodes(64))


def test_prefer_closest_needs_distances() -> None:
    config = parse_config(
        {"policy": "none", "topologyManagerPolicyOptions": {"prefer-closest-numa-nodes": "true"}}
    )
    validate_for_machine(config, MACHINE)
    assert machine_error(config, NO_DISTANCES) == (
        'config.topologyManagerPolicyOptions.prefer-closest-numa-nodes: "true" needs the NUMA'
        " distance matrix, but the topology has no distances"
    )
    off = parse_config(
        {"policy": "none", "topologyManagerPolicyOptions": {"prefer-closest-numa-nodes": "false"}}
    )
    validate_for_machine(off, NO_DISTANCES)


def test_source_prefixes_machine_errors() -> None:
    with pytest.raises(ConfigError, match=r"^scenario\.config\.reservedMemory: "):
        validate_for_machine(parse_config({}), MACHINE, source="scenario.config")


# -- files ------------------------------------------------------------------------


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "policy: static\n"
        "topologyManagerPolicy: single-numa-node\n"
        "reservedMemory:\n"
        "  - numaNode: 0\n"
        "    limits: {memory: 1Gi}\n"
    )
    config = load_config_file(path)
    assert config.topology_manager_policy == "single-numa-node"
    assert config.reserved_memory == (ReservedMemory(0, "memory", GI),)


def test_load_config_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("policy: dynamic\n")
    with pytest.raises(ConfigError, match=rf'^{path}: config.policy: unknown policy: "dynamic"'):
        load_config_file(path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'absent.yaml'}: no such file$"):
        load_config_file(tmp_path / "absent.yaml")
    path.write_text("policy: [\n")
    with pytest.raises(InputError, match=rf"^{path}: not valid YAML or JSON: "):
        load_config_file(path)
