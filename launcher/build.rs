//! Builds the tiny test guests from source (guests/*.S, with binutils) so
//! that tests and the demo never depend on checked-in binaries. The guests
//! land in $OUT_DIR/guests; VMPOD_GUESTS_DIR tells the tests where.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guests = manifest_dir.join("../guests");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("guests");
    println!("cargo:rerun-if-changed={}", guests.display());
    let status = Command::new("sh")
        .arg(guests.join("build.sh"))
        .arg(&out)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => {
            panic!("guests/build.sh failed ({status}); it needs binutils (as, ld, objcopy)")
        }
        Err(error) => panic!("cannot run guests/build.sh: {error}"),
    }
    println!("cargo:rustc-env=VMPOD_GUESTS_DIR={}", out.display());
    // Relative relocations packed (DT_RELR, glibc 2.36+): the loader no
    // longer reads a table of ~14,000 entries at every start.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    mark_kvm();
}

/// Sets `cfg(vmpod_kvm)` when /dev/kvm opens read-write here. Tests that
/// need KVM carry `#[cfg_attr(not(vmpod_kvm), ignore = ...)]`, so where
/// it is missing the test runner itself reports them as ignored instead
/// of counting them as passed.
fn mark_kvm() {
    println!("cargo::rustc-check-cfg=cfg(vmpod_kvm)");
    println!("cargo:rerun-if-changed=/dev/kvm");
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if usable {
        println!("cargo:rustc-cfg=vmpod_kvm");
    } else {
        println!("cargo:warning=/dev/kvm is missing or not usable: the KVM tests are ignored");
    }
}
