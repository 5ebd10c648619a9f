"""The VM set: boots one cgroup v2 guest (tests/vm/run.py, minutes under TCG), runs
``VM_TESTS`` there, and reports each as a test here. Only with ``pytest -m vm``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from junit import read_junit
from vm.run import GUEST_TIMEOUT, REPO, VM_TESTS, VmResult, run_in_vm, unavailable


@pytest.fixture(scope="module")
def guest() -> Iterator[VmResult]:
    if os.environ.get("KERNEL_DOCTOR_IN_VM"):
        pytest.skip("already inside the VM")
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"cannot boot the VM: {reason}")
    results = Path(tempfile.mkdtemp(prefix="kd-vm-", dir="/var/tmp"))
    result = run_in_vm(VM_TESTS, results, echo=False)
    print(f"VM part: {result.seconds:.0f} s, exit status {result.exit_status}, in {results}")
    for gist in result.cgroup_reports:
        print(
            f"  {gist['test']}: {gist['outcome']} {gist['cause']} cell {gist['cell']} "
            f"line {gist['line']} ({gist['limit_source']})"
        )
    yield result


@pytest.mark.vm
@pytest.mark.timeout(GUEST_TIMEOUT + 300)  # the first one waits for the whole guest run
@pytest.mark.parametrize("selection", VM_TESTS)
def test_in_the_guest(guest: VmResult, selection: str) -> None:
    cases = [c for c in guest.cases if c.test == selection or c.test.startswith(selection + "::")]
    console = Path(guest.results_dir, "console.log")
    assert cases, f"the guest reported nothing for {selection}; see {console}"
    failed = [f"{c.test}: {c.outcome} {c.message}" for c in cases if c.outcome != "passed"]
    assert not failed, "\n".join(failed)


def test_junit_node_ids_are_rebuilt(tmp_path: Path) -> None:
    # The harness's own reading of pytest's JUnit XML, without booting anything.
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_deaths" name="test_oom_one_big_allocation" time="61.5"/>'
        '<testcase classname="tests.vm.test_cgroup_v2" name="test_x" time="1">'
        '<skipped message="no unshare" /></testcase>'
        "</testsuite></testsuites>"
    )
    cases = read_junit(xml, REPO)
    assert [(c.test, c.outcome, c.seconds, c.message) for c in cases] == [
        ("tests/test_deaths.py::test_oom_one_big_allocation", "passed", 61.5, ""),
        ("tests/vm/test_cgroup_v2.py::test_x", "skipped", 1.0, "no unshare"),
    ]
