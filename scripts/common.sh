# Shared helpers for vmpod's scripts: sourced, not run.
# Installs only what is missing, so a second run is quick and offline-safe.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

say() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages PKG... : apt-get install the Debian packages not yet installed.
ensure_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_rust: vmpod needs Rust 1.89 or newer with rustfmt and clippy.
ensure_rust() {
    if ! command -v cargo >/dev/null; then
        echo "cargo is not installed. Install Rust 1.89 or newer (https://rustup.rs), then run this again." >&2
        echo "(Debian's own cargo package is too old for vmpod's dependencies.)" >&2
        exit 1
    fi
    local version
    version="$(rustc --version | awk '{print $2}')"
    if ! printf '1.89.0\n%s\n' "$version" | sort -V -C; then
        echo "rustc $version is too old: vmpod needs 1.89 or newer (rustup update)." >&2
        exit 1
    fi
    # The virtio-drivers test guest is built for bare metal.
    if command -v rustup >/dev/null \
            && ! rustup target list --installed | grep -qx x86_64-unknown-none; then
        say "rustup target add x86_64-unknown-none"
        rustup target add x86_64-unknown-none
    fi
}

# ensure_podman: podman as root, configured as this kind of host needs it
# (runc; no default ulimits, which a container host may not allow raising),
# and /dev/kvm open to the non-root user (uid 107) vmpod's pods run as.
# catatonit is only a Recommends of Debian's podman, but without it podman
# cannot build the local pause image every `podman kube play` needs.
ensure_podman() {
    ensure_packages podman runc catatonit
    local conf=/etc/containers/containers.conf.d/50-vmpod.conf
    if [ ! -f "$conf" ]; then
        say "configuring podman: $conf (runtime runc, no default ulimits)"
        as_root mkdir -p "$(dirname "$conf")"
        printf '# Written by vmpod'"'"'s scripts/common.sh (ensure_podman).\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' \
            | as_root tee "$conf" >/dev/null
    fi
    # Most distributions' udev (systemd's default rule) make /dev/kvm 0666;
    # where it is 0600, pods running as uid 107 cannot open it.
    if [ -c /dev/kvm ] && [ "$(( 0$(stat -c %a /dev/kvm) & 06 ))" -ne 6 ]; then
        say "making /dev/kvm 0666, as systemd's udev rule does, so pods running as uid 107 can use it"
        as_root chmod 0666 /dev/kvm
    fi
}
