"""A stock Debian kernel booting on vmpod, one level down: QEMU TCG with
-cpu max gives an L1 Debian kernel a fast nested /dev/kvm, and vmpod runs
inside L1 (see the shared TESTING.md). Where QEMU is missing these tests
are skipped with that reason, never passed."""

import re
import subprocess

import pytest

import harness
from conftest import not_here, result

SCENARIOS = (
    "poweroff vmpod 2 poweroff",
    "reboot vmpod 2 reboot poweroff",
    "powerdown vmpod 2 qmp:system_powerdown",
    "qmpreset vmpod 2 qmp:system_reset poweroff",
    "pause vmpod 2 pause",
    "ctrlaltdel vmpod 2 keys:ctrl-alt-delete poweroff",
    "passtdies vmpod 1 killpasst",
    "screen vmpodscreen 1 display",
    "boot boot-vmpod 2",
)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """What a VNC viewer on the host did while the screen scenario ran:
    vncdotool, through the port QEMU forwards to L1's `vmpod vnc`, takes a
    screenshot and types "touch /typed" on L2's tty1."""
    from test_display import VNCDO, free_port

    port = free_port()
    seen = {"shot": tmp_path_factory.mktemp("screen") / "screen.png"}

    def act():
        def vncdo(*commands):
            return subprocess.run([VNCDO, "-s", f"127.0.0.1::{port}", *commands],
                                  capture_output=True, text=True, timeout=300)

        seen["capture"] = vncdo("capture", str(seen["shot"]))
        seen["type"] = vncdo("type", "touch /typed", "key", "enter")

    return port, {"vnc-ready": act}, seen


@pytest.fixture(scope="module")
def nested(vmpod_binary, viewer):
    port, when, _ = viewer
    try:
        return harness.run(vmpod_binary, *SCENARIOS, vnc_port=port, when=when)
    except harness.Unavailable as why:
        not_here(str(why))


def test_linux_reaches_init_and_sees_every_vcpu(nested):
    run = nested["poweroff"]
    assert "L2: reached /init" in run["stdout"], run["stdout"]
    assert "L2: nproc=2" in run["stdout"], run["stdout"]


def test_linux_keeps_time_with_kvmclock(nested):
    assert "L2: clocksource=kvm-clock" in nested["poweroff"]["stdout"], nested["poweroff"]["stdout"]


def test_poweroff_makes_vmpod_exit_0(nested):
    run = nested["poweroff"]
    assert "L2: powering off" in run["stdout"]
    assert result(run, "exit") == "0", run["stderr"]
    assert "the guest powered off" in run["stderr"]


def test_reboot_boots_the_kernel_again_in_the_same_process(nested):
    run = nested["reboot"]
    assert result(run, "boots") == "2", run["stdout"]
    assert run["stdout"].count("L2: nproc=2") == 2, run["stdout"]
    assert "booting it again in this process (boot 2)" in run["stderr"], run["stderr"]
    assert result(run, "exit") == "0", run["stderr"]


def test_a_stock_kernel_finds_virtio_rng_through_the_dsdt(nested):
    # Debian's kernel has no virtio_mmio.device= support: the LNRO0005
    # entry in vmpod's DSDT is how virtio_mmio finds the device.
    run = nested["poweroff"]
    assert "L2: rng_current=virtio_rng.0" in run["stdout"], run["stdout"]
    assert "L2: hwrng gave 4096 bytes" in run["stdout"], run["stdout"]
    # After a reboot the device is reset and found again.
    assert nested["reboot"]["stdout"].count("L2: hwrng gave 4096 bytes") == 2, nested["reboot"]["stdout"]


def test_disks_appear_with_their_sizes_serials_and_read_only_flags(nested):
    run = nested["poweroff"]
    out = run["stdout"]
    # 64Mi created by vmpod (hostDisk DiskOrCreate); a 1 MiB read-only image.
    assert "serial=vmpod-data sectors=131072 ro=0" in out, out
    assert "serial=vmpod-ro sectors=2048 ro=1" in out, out
    assert "says read-only image" in out, out
    assert "refused a write" in out, out


def test_data_written_and_flushed_in_the_guest_is_in_the_file_after_vmpod_exits(nested):
    run = nested["poweroff"]
    assert "written and flushed" in run["stdout"], run["stdout"]
    assert result(run, "exit") == "0", run["stderr"]
    assert result(run, "data_marker") == "1", run["result"]
    assert result(run, "ro_intact") == "read-only", run["result"]


def test_the_data_disk_takes_discards(nested):
    out = nested["poweroff"]["stdout"]
    assert "serial=vmpod-data sectors=131072 ro=0 discard_max=1073741824" in out, out
    assert "discarded 1 MiB" in out, out


def test_a_qcow2_layer_reads_through_to_its_raw_backing_file(nested):
    # Made by qemu-img: "base image" and "base tail" from base.raw, 'a's
    # written into the layer at 1 MiB.
    out = nested["poweroff"]["stdout"]
    assert "serial=vmpod-layer sectors=16384 ro=1" in out, out
    assert "layer: base image / aaaa / base tail" in out, out


def test_a_container_disk_takes_writes_and_its_image_stays_unchanged(nested):
    run = nested["poweroff"]
    out = run["stdout"]
    assert "serial=vmpod-container sectors=16384 ro=0" in out, out
    assert "container: container image / container tail" in out, out
    assert "container now: guest wrote this / container tail" in out, out
    assert result(run, "container_intact") == "yes", run["result"]
    # The overlay is a fresh one on every start: writes vanish with the pod.
    assert "guest writes go to /vm/scratch/root.overlay.qcow2" in run["stderr"], run["stderr"]


def test_the_guest_gets_the_pods_address_by_dhcp_from_passt(nested):
    run = nested["poweroff"]
    out = run["stdout"]
    # L1's address (QEMU user networking), which passt hands on.
    assert "L2: dhcp ip=10.0.2.15 subnet=255.255.255.0 router=10.0.2.2" in out, out + run["stderr"]
    assert "L2: eth0 mac=02:" in out and "mtu=1500" in out, out
    assert "NIC default: passt started" in run["stderr"], run["stderr"]


def test_the_guest_reaches_a_tcp_server_on_the_pod_side(nested):
    run = nested["poweroff"]
    assert "L2: sent to the pod side" in run["stdout"], run["stdout"]
    assert result(run, "from_guest") == "hello_from_the_guest", run["result"]


def test_a_server_in_the_guest_is_reachable_through_the_forwarded_port(nested):
    run = nested["poweroff"]
    assert result(run, "to_guest") == "hello_from_a_server_in_the_guest", run["result"] + [run["stderr"]]


def test_when_passt_dies_vmpod_restarts_it_and_the_vm_goes_on(nested):
    run = nested["passtdies"]
    assert "the network backend stopped" in run["stderr"], run["stderr"]
    assert "the network backend is back; link up" in run["stderr"], run["stderr"]
    assert result(run, "passts") == "1", run["result"]
    assert result(run, "exit") == "0", run["stderr"]


def test_the_cloud_init_seed_mounts_and_holds_the_definitions_user_data(nested):
    out = nested["poweroff"]["stdout"]
    # The label sits in the FAT boot sector at 0x2b, where blkid reads it.
    assert "L2: seed label=cidata user-data: runcmd: [echo from-the-definition]" in out, out
    assert "local-hostname: linux" in out, out
    assert "instance-id: " in out, out


def test_the_config_drive_mounts_with_openstacks_layout(nested):
    out = nested["poweroff"]["stdout"]
    assert "L2: config drive label=config-2 user_data: hostname: from-config-drive" in out, out
    assert '"hostname":"linux"' in out, out


def test_the_boot_log_is_on_stdout_and_on_vm_serial(nested):
    run = nested["poweroff"]
    for line in ("L2: reached /init", "L2: nproc=2", "L2: waiting for a command"):
        assert line in run["stdout"], run["stdout"]
        assert line in run["serial"], f"/vm/serial showed: {run['serial']!r}"


def test_qmp_system_powerdown_powers_linux_off(nested):
    run = nested["powerdown"]
    assert '"event":"POWERDOWN"' in run["qmp"], run["qmp"]
    assert "L2: power button pressed" in run["stdout"], run["stdout"]
    assert result(run, "exit") == "0", run["stderr"]


def test_qmp_system_reset_reboots_linux(nested):
    run = nested["qmpreset"]
    assert result(run, "boots") == "2", run["stdout"]
    assert "the guest reset (a system_reset command)" in run["stderr"], run["stderr"]
    assert result(run, "exit") == "0", run["stderr"]


def test_qmp_stop_and_cont_pause_and_resume_linux(nested):
    run = nested["pause"]
    assert '"status":"paused"' in run["qmp"], run["qmp"]
    assert '"event":"STOP"' in run["qmp"] and '"event":"RESUME"' in run["qmp"], run["qmp"]
    # After cont the guest is alive: it takes the typed poweroff.
    assert "L2: powering off" in run["stdout"], run["stdout"]
    assert result(run, "exit") == "0", run["stderr"]


def test_ctrl_alt_delete_through_send_key_reboots_linux(nested):
    run = nested["ctrlaltdel"]
    assert result(run, "boots") == "2", run["stdout"] + run["stderr"]
    assert result(run, "exit") == "0", run["stderr"]


def test_the_stock_kernels_console_is_on_the_vnc_screen_and_vnc_keys_reach_tty1(nested, viewer):
    """efifb + fbcon draw tty1 on vmpod's framebuffer; a VNC viewer on the
    host sees its text and types a command into a shell there through the
    virtio keyboard."""
    run = nested["screen"]
    _, _, seen = viewer
    assert "L2: framebuffer EFI VGA 1024,768" in run["stdout"], run["stdout"]
    assert "L2: input device vmpod virtio keyboard" in run["stdout"], run["stdout"]
    assert seen.get("capture") is not None and seen["capture"].returncode == 0, seen
    from PIL import Image

    image = Image.open(seen["shot"]).convert("RGB")
    assert image.size == (1024, 768)
    colours = image.getcolors(1024 * 768)
    text = sum(count for count, colour in colours if colour == (170, 170, 170))
    others = sum(count for count, colour in colours if colour not in ((0, 0, 0), (170, 170, 170)))
    # A line of fbcon's light grey text on black, at the top of the screen.
    assert text > 300 and others < 1000, colours[:10]
    assert image.crop((0, 0, 1024, 48)).getcolors(1024 * 48) and image.crop((0, 400, 1024, 768)).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert seen["type"].returncode == 0, seen["type"].stderr
    assert result(run, "typed") == "yes", run["stdout"]
    assert result(run, "exit") == "0", run["stderr"]


def test_the_kernel_places_itself_at_random_on_every_boot(nested):
    """KASLR works under vmpod: the kernel's decompressor finds the memory
    map and the randomness it needs (RDRAND, the TSC) and moves its text
    from where it was linked. (One of ~480 slots is the linked address, so
    only both boots of the reboot scenario there would be a failure.)"""
    texts = re.findall(r"L2: kernel text at (\w+)", nested["reboot"]["stdout"])
    assert len(texts) == 2, nested["reboot"]["stdout"]
    assert set(texts) - {"ffffffff81000000"}, texts


def test_linux_programs_its_timer_by_tsc_deadline(nested):
    assert "L2: timer by tsc-deadline" in nested["poweroff"]["stdout"], nested["poweroff"]["stdout"]


def test_the_boot_benchmark_times_a_boot_and_counts_what_it_cost_kvm(nested):
    """The scenario behind benches/nested_linux_boot.py: /init powers off at
    once; L1 times the first guest instruction, /init and the exit, and
    counts KVM's exits."""
    run = nested["boot"]
    assert result(run, "exit") == "0", run["stderr"]
    first_entry, at_init, ended = (float(result(run, key)) for key in ("first_entry", "init_wall", "exit_after"))
    assert 0 < first_entry < at_init < ended, run["result"]
    assert float(result(run, "init_uptime")) > 0
    exits = next(entry for entry in run["result"] if entry.startswith("counts kvm_exit."))
    assert sum(int(pair.split("=")[1]) for pair in exits.split()[2:]) > 1000, exits
