"""A Debian 12 cloud image booting on vmpod from its own disk, as a
KubeVirt VM users paste: a containerDisk, cloudInitNoCloud and the pod
network, no kernelBoot. The image is built from Debian packages by
images/build-debian-cloud.sh (GPT, ext4 root with /boot, grub-mkconfig's
grub.cfg) and boots one level down in the nested harness (see
test_linux_guest.py). vmpod reads grub.cfg's default entry itself: no
firmware runs."""

import pytest

import harness
from conftest import result, run_nested


@pytest.fixture(scope="module")
def cloud(vmpod_binary):
    return run_nested(vmpod_binary, "cloudboot cloud 2")["cloudboot"]


def test_vmpod_boots_the_kernel_grub_cfg_names(cloud):
    assert "disk root: booting /boot/vmlinuz-" in cloud["stderr"], cloud["stderr"]
    assert "(/boot/grub/grub.cfg on partition 1: \"Debian GNU/Linux\")" in cloud["stderr"], cloud["stderr"]
    # The image's own console arguments are kept (no console= added).
    command_line = [line for line in cloud["stderr"].splitlines() if "kernel command line:" in line]
    assert command_line and "root=UUID=" in command_line[0], cloud["stderr"]
    assert command_line[0].endswith("console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"), command_line
    assert "Linux version" in cloud["stdout"]


def test_cloud_init_sets_the_hostname_and_runs_the_user_data(cloud):
    assert "CLOUD: user-data ran as uid 0 on cloudy" in cloud["stdout"], cloud["stdout"][-3000:]
    assert "Datasource DataSourceNoCloud" in cloud["stdout"]
    assert result(cloud, "cloud_init_final") != "-"


def test_the_guest_gets_its_address_by_dhcp_and_reaches_both_ways(cloud):
    assert "CLOUD: address 10.0.2.15/24" in cloud["stdout"], cloud["stdout"][-3000:]
    assert result(cloud, "from_guest") == "hello_from_the_cloud_guest"
    assert result(cloud, "to_guest") == "served_by_the_cloud_guest"


def test_power_state_poweroff_ends_vmpod_with_0_and_the_image_is_unchanged(cloud):
    assert result(cloud, "exit") == "0", cloud["stderr"]
    assert "the guest powered off" in cloud["stderr"]
    assert result(cloud, "base_intact") == "yes"
