//! `scripts/install-deps.sh` decides what a machine lacks from what the build and the tests
//! really load. Each decision (scripts/lib/deps.sh) runs here against a fake root laid out like a
//! machine, with a PATH of fake commands, and must name exactly the Debian packages it would
//! install. Nothing is installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory laid out like a machine's root, and a directory of fake commands.
struct FakeMachine {
    root: tempfile::TempDir,
}

impl FakeMachine {
    fn new() -> FakeMachine {
        FakeMachine {
            root: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Creates a file (and its directories) under the fake root.
    fn file(&self, path: &str) -> &Self {
        let p = self.root.path().join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, b"\x7fELF").expect("write");
        self
    }

    /// A fake command in the root's usr/bin that runs `script` (a shell body).
    fn command(&self, name: &str, script: &str) -> &Self {
        let p = self.bin().join(name);
        fs::create_dir_all(self.bin()).expect("mkdir");
        fs::write(&p, format!("#!/bin/sh\n{script}\n")).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        self
    }

    fn bin(&self) -> PathBuf {
        self.root.path().join("usr/bin")
    }

    /// What one decision function prints on this machine.
    fn decide(&self, function: &str) -> String {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/deps.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(". '{}' && {function}", lib.display()))
            .env("DEPS_ROOT", format!("{}/", self.root.path().display()))
            .env("DEPS_PATH", self.bin())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{function} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    }
}

const CLANG_HEADERS: &str = "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h";

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    // The machine the README's first command failed on: Debian 12 with libclang-cpp14 only.
    let m = FakeMachine::new();
    m.file("usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    m.file("usr/lib/llvm-14/lib/libclang-cpp.so.1");
    assert_eq!(m.decide("deps_need_libclang"), "libclang-dev");
}

#[test]
fn a_machine_without_any_clang_needs_libclang() {
    let m = FakeMachine::new();
    assert_eq!(m.decide("deps_need_libclang"), "libclang-dev");
}

#[test]
fn versioned_libclang_with_clang_headers_is_enough() {
    // libclang1-14 and libclang-common-14-dev, as libclang-dev leaves them.
    let m = FakeMachine::new();
    m.file("usr/lib/x86_64-linux-gnu/libclang-14.so.1").file(CLANG_HEADERS);
    assert_eq!(m.decide("deps_need_libclang"), "");
    let m = FakeMachine::new();
    m.file("usr/lib/llvm-14/lib/libclang.so.1").file(CLANG_HEADERS);
    assert_eq!(m.decide("deps_need_libclang"), "");
    let m = FakeMachine::new();
    m.file("usr/lib/aarch64-linux-gnu/libclang.so")
        .file("usr/lib/clang/16/include/stddef.h");
    assert_eq!(m.decide("deps_need_libclang"), "");
}

#[test]
fn libclang_without_clang_headers_still_needs_libclang_dev() {
    // libclang1-14 alone loads, but cannot parse RocksDB's header without stddef.h.
    let m = FakeMachine::new();
    m.file("usr/lib/x86_64-linux-gnu/libclang-14.so.1");
    assert_eq!(m.decide("deps_need_libclang"), "libclang-dev");
}

#[test]
fn compilers_python_pip_and_npm_are_looked_for_on_the_path() {
    let m = FakeMachine::new();
    assert_eq!(m.decide("deps_need_cxx"), "g++ make");
    assert_eq!(m.decide("deps_need_python"), "python3 python3-pip");
    assert_eq!(m.decide("deps_need_node"), "nodejs npm");
    m.command("g++", "exit 0").command("make", "exit 0");
    m.command("node", "exit 0").command("npm", "exit 0");
    assert_eq!(m.decide("deps_need_cxx"), "");
    assert_eq!(m.decide("deps_need_node"), "");
}

#[test]
fn a_machine_without_ip_needs_iproute2() {
    let m = FakeMachine::new();
    assert_eq!(m.decide("deps_need_netns"), "iproute2");
    m.command("ip", "exit 0");
    assert_eq!(m.decide("deps_need_netns"), "");
}

#[test]
fn a_machine_without_openssl_needs_it() {
    let m = FakeMachine::new();
    assert_eq!(m.decide("deps_need_openssl"), "openssl");
    m.command("openssl", "exit 0");
    assert_eq!(m.decide("deps_need_openssl"), "");
}

#[test]
fn a_machine_without_chromium_needs_it_and_its_driver() {
    let m = FakeMachine::new();
    assert_eq!(m.decide("deps_need_browser"), "chromium chromium-driver");
    m.command("chromium", "exit 0");
    assert_eq!(m.decide("deps_need_browser"), "chromium-driver");
    m.command("chromedriver", "exit 0");
    assert_eq!(m.decide("deps_need_browser"), "");
}

#[test]
fn python3_without_pip_needs_python3_pip() {
    let m = FakeMachine::new();
    m.command(
        "python3",
        r#"[ "$1" = -m ] && [ "$2" = pip ] && { echo "No module named pip" >&2; exit 1; }; exit 0"#,
    );
    assert_eq!(m.decide("deps_need_python"), "python3-pip");
    m.command(
        "python3",
        r#"[ "$1" = -m ] && [ "$2" = pip ] && echo "pip 23.0.1"; exit 0"#,
    );
    assert_eq!(m.decide("deps_need_python"), "");
}

#[test]
fn the_whole_decision_lists_every_missing_package_once() {
    let m = FakeMachine::new();
    m.file("usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    m.command("g++", "exit 0")
        .command("make", "exit 0")
        .command("node", "exit 0");
    m.command("python3", "exit 1");
    assert_eq!(
        m.decide("deps_needed"),
        "libclang-dev python3-pip npm iproute2 chromium chromium-driver openssl"
    );
    let full = FakeMachine::new();
    full.file("usr/lib/x86_64-linux-gnu/libclang-14.so.1")
        .file(CLANG_HEADERS);
    for c in [
        "g++",
        "make",
        "python3",
        "node",
        "npm",
        "ip",
        "chromium",
        "chromedriver",
        "openssl",
    ] {
        full.command(c, "exit 0");
    }
    assert_eq!(full.decide("deps_needed"), "");
}
