"""The nested harness itself: when L1 (its KVM under QEMU TCG) fails, the
scenarios that had not finished run again in a new L1, and the ones that had
are kept; after ATTEMPTS failures the error shows how L1 ended."""

import subprocess

import pytest

import harness


def scenario_output(name, exit_status=0, extra=""):
    return (f"L1: RESULT {name} starting-at=1.0 s\n{extra}"
            f"L1: {name} stdout | L2: reached /init after 2.7 s\n"
            f"L1: RESULT {name} exit={exit_status} boots=1\n")


@pytest.fixture
def l1(monkeypatch, tmp_path):
    """Replaces L1 with scripted outputs; returns the scenario lists it was
    given, one per boot."""
    script, given = [], []
    monkeypatch.setattr(harness, "TARGET", tmp_path)
    monkeypatch.setattr(harness.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(harness, "prepare_cloud", lambda prepared: None)

    def fake_run_l1(command, timeout, when=None, env=None, live=None):
        given.append([str(part).split()[0] for part in command[3:]])
        return script.pop(0)

    monkeypatch.setattr(harness, "run_l1", fake_run_l1)
    (tmp_path / "nested").mkdir()
    return script, given


SCENARIOS = ("one vmpod 2 poweroff", "two vmpod 2 reboot poweroff", "three vmpod 1 poweroff")


def test_a_stalled_l1_runs_again_from_the_scenario_it_stalled_in(l1):
    script, given = l1
    script.append((scenario_output("one") + "L1: RESULT two starting-at=50 s\n", False))
    script.append((scenario_output("two") + scenario_output("three") + "L1: RESULT done\n", True))
    with pytest.warns(UserWarning, match="stalled or did not finish \\(during two\\); booting it again for two, three"):
        runs = harness.run("vmpod", *SCENARIOS)
    assert given == [["one", "two", "three"], ["two", "three"]]
    assert sorted(runs) == ["one", "three", "two"]
    # "two" as the second L1 ran it, not the first one's unfinished start.
    assert runs["two"]["result"] == ["starting-at=1.0 s", "exit=0 boots=1"]
    assert runs["one"]["stdout"] == "L2: reached /init after 2.7 s\n"


def test_a_scenario_during_which_l1s_kernel_panicked_runs_again(l1):
    script, given = l1
    panic = "[  251.2] Kernel panic - not syncing: Fatal exception in interrupt\n"
    script.append((scenario_output("one") + scenario_output("two", extra=panic), True))
    script.append((scenario_output("two") + scenario_output("three"), True))
    with pytest.warns(UserWarning, match="showed Kernel panic \\(during two\\)"):
        runs = harness.run("vmpod", *SCENARIOS)
    assert given == [["one", "two", "three"], ["two", "three"]]
    assert "Kernel panic" not in "".join(runs["two"]["result"]) + runs["two"]["stdout"]


def test_the_last_attempts_finished_scenarios_are_taken_as_they_are(l1):
    script, _ = l1
    crash = "L1: one stderr | vmpod: info: the guest reset (triple fault): booting it again\n"
    for _ in range(harness.ATTEMPTS):
        script.append((scenario_output("one", extra=crash), True))
    with pytest.warns(UserWarning, match="triple-fault"):
        runs = harness.run("vmpod", SCENARIOS[0])
    assert "triple fault" in runs["one"]["stderr"]


def test_an_l1_that_never_finishes_ends_with_its_last_lines(l1):
    script, given = l1
    for _ in range(harness.ATTEMPTS):
        script.append(("SeaBIOS\nL1: /dev/kvm ready\nL1: RESULT one starting-at=7 s\nlast words of L1\n", False))
    with pytest.warns(UserWarning), pytest.raises(harness.Hung) as failure:
        harness.run("vmpod", *SCENARIOS)
    assert len(given) == harness.ATTEMPTS
    message = str(failure.value)
    assert message.startswith("one, two, three never finished in 3 runs of L1 (the last stalled or did not finish "
                              "(during one))")
    assert message.endswith("last words of L1\n")


def test_a_qemucloud_scenario_runs_again_with_the_cloud_scenario_that_made_its_seed(l1):
    script, given = l1
    script.append((scenario_output("vmpod-0") + "L1: RESULT qemu-0 starting-at=300 s\n", False))
    script.append((scenario_output("vmpod-0") + scenario_output("qemu-0"), True))
    with pytest.warns(UserWarning):
        runs = harness.run("vmpod", "vmpod-0 cloud 2", "qemu-0 qemucloud 2")
    assert given == [["vmpod-0", "qemu-0"], ["vmpod-0", "qemu-0"]]
    assert sorted(runs) == ["qemu-0", "vmpod-0"]


def test_a_run_that_finished_with_trouble_is_kept_when_later_l1s_do_worse(l1):
    script, given = l1
    crash = "L1: one stderr | vmpod: info: the guest reset (triple fault): booting it again\n"
    script.append((scenario_output("one", extra=crash), True))
    for _ in range(harness.ATTEMPTS - 1):
        script.append(("L1: RESULT one starting-at=7 s\n", False))
    with pytest.warns(UserWarning):
        runs = harness.run("vmpod", SCENARIOS[0])
    assert len(given) == harness.ATTEMPTS
    assert "triple fault" in runs["one"]["stderr"]
    assert harness.value(runs["one"], "exit") == "0"


def test_a_vm_killed_as_stuck_runs_again_and_an_earlier_finish_beats_a_later_trouble(l1):
    script, given = l1
    stuck = "L1: one stuck: its VM was killed after 600 s\n"
    crash = "L1: one stderr | vmpod: info: the guest reset (triple fault): booting it again\n"
    script.append((scenario_output("one", extra=crash), True))
    for _ in range(harness.ATTEMPTS - 1):
        script.append((scenario_output("one", exit_status=137, extra=stuck), True))
    with pytest.warns(UserWarning) as warned:
        runs = harness.run("vmpod", SCENARIOS[0])
    assert "saw a stuck VM killed (during one)" in str(warned[-1].message)
    assert len(given) == harness.ATTEMPTS
    assert harness.value(runs["one"], "exit") == "0"


def test_l1_is_stopped_soon_after_its_own_kernel_shows_trouble_but_not_for_an_l2s(monkeypatch):
    monkeypatch.setattr(harness, "TROUBLE_SECONDS", 1)
    l2_stall = "echo 'L1: boot stdout | [ 30.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:'"
    output, finished = harness.run_l1(["sh", "-c", f"echo 'L1: /dev/kvm ready'; {l2_stall}; sleep 3; echo end"], 30)
    assert finished and output.endswith("end\n")
    for l1_trouble in ("[  645.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                       "[  484.2] INFO: task init:1 blocked for more than 120 seconds."):
        command = f"echo 'L1: /dev/kvm ready'; echo '{l1_trouble}'; exec sleep 20"
        output, finished = harness.run_l1(["sh", "-c", command], 30)
        assert not finished and l1_trouble in output
