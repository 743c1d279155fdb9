//! VM definitions as a user meets them: the corpus of bad definitions, the
//! KubeVirt-shaped examples, the project's manifests, the CLI's exit codes
//! and messages, and a fuzz-style test that arbitrary input never panics.
//!
//! Corpus files say what they expect in leading comments:
//! `# expect: <problem>` (each must match one problem, and there must be no
//! other), `# expect-valid`, `# expect-ignored: <path>`,
//! `# expect-load-error: <text>` (the file is refused before it is read).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmpod::spec::{self, Document};

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/definitions")
        .join(name)
}

fn corpus_files(name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(name))
        .expect("corpus directory exists")
        .map(|entry| entry.expect("readable entry").path())
        .collect();
    files.sort();
    files
}

/// The `# expect…` header lines of a corpus file, as (directive, text).
fn expectations(path: &Path) -> Vec<(String, String)> {
    let bytes = std::fs::read(path).expect("corpus file is readable");
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("# expect"))
        .map(|rest| match rest.split_once(": ") {
            Some((directive, value)) => (format!("expect{directive}"), value.to_owned()),
            None => (format!("expect{rest}"), String::new()),
        })
        .collect()
}

/// Checks one corpus file; returns a description of what went wrong, if anything.
fn check_file(path: &Path) -> Result<(), String> {
    let expects = expectations(path);
    if expects.is_empty() {
        return Err("no # expect lines".into());
    }
    let documents = match spec::read_file(path) {
        Ok(documents) => documents,
        Err(error) => {
            let shown = format!(
                "{error} ({})",
                std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            return match expects.iter().find(|(d, _)| d == "expect-load-error") {
                Some((_, want)) if shown.contains(want.as_str()) => Ok(()),
                _ => Err(format!("refused to load: {shown}")),
            };
        }
    };
    let [Document::Vm(definition)] = documents.as_slice() else {
        return Err(format!("expected one VM definition, found {documents:?}"));
    };
    let wanted_problems: Vec<&String> = expects
        .iter()
        .filter(|(d, _)| d == "expect")
        .map(|(_, v)| v)
        .collect();
    match &definition.outcome {
        Ok(valid) => {
            if !wanted_problems.is_empty() || !expects.iter().any(|(d, _)| d == "expect-valid") {
                return Err(format!("accepted, but expected {wanted_problems:?}"));
            }
            for (_, path) in expects.iter().filter(|(d, _)| d == "expect-ignored") {
                if !valid.ignored.iter().any(|ignored| &ignored.path == path) {
                    return Err(format!(
                        "{path} was not reported as ignored: {:?}",
                        valid.ignored
                    ));
                }
            }
            Ok(())
        }
        Err(problems) => {
            let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let all_matched = wanted_problems
                .iter()
                .all(|want| found.iter().any(|f| f.contains(want.as_str())));
            if all_matched && found.len() == wanted_problems.len() {
                Ok(())
            } else {
                Err(format!(
                    "problems {found:#?}\nexpected {wanted_problems:#?}"
                ))
            }
        }
    }
}

fn check_corpus(name: &str) -> usize {
    let files = corpus_files(name);
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            check_file(file)
                .err()
                .map(|why| format!("{}: {why}", file.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    files.len()
}

#[test]
fn every_bad_definition_names_its_problem() {
    let count = check_corpus("bad");
    assert!(
        count >= 30,
        "the bad corpus has {count} files, at least 30 expected"
    );
}

#[test]
fn kubevirt_shaped_examples_are_accepted_or_rejected_with_exact_paths() {
    check_corpus("kubevirt");
}

fn vmpod(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(args)
        .env("VMPOD_LOG", "info")
        .output()
        .expect("vmpod runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn project_manifests_validate() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<String> = std::fs::read_dir(&manifests)
        .expect("manifests/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let args: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(String::as_str))
        .collect();
    let output = vmpod(&args);
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(stdout(&output).contains(": ok ("), "{}", stdout(&output));
}

#[test]
fn validate_prints_every_problem_and_exits_2() {
    let file = corpus_dir("kubevirt").join("fedora-cloudinit.yaml");
    let output = vmpod(&["validate", file.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("VirtualMachine lab/fedora-web: 3 problems"),
        "{err}"
    );
    assert!(
        err.contains("  spec.dataVolumeTemplates: not supported by vmpod"),
        "{err}"
    );
    assert!(
        err.contains("  spec.template.spec.domain.devices.disks[1].cdrom: not supported by vmpod"),
        "{err}"
    );
}

#[test]
fn validate_reports_ignored_fields_and_summary() {
    let file = corpus_dir("kubevirt").join("fedora-kernelboot.yaml");
    let output = vmpod(&["validate", file.to_str().expect("utf-8 path")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.contains("VirtualMachine lab/fedora-web: ok (2 vCPUs, 2Gi memory, 2 disks, 1 NIC)"),
        "{out}"
    );
    assert!(
        out.contains(
            "  ignored: spec.template.spec.evictionStrategy: scheduling belongs to the pod"
        ),
        "{out}"
    );
    let quiet = vmpod(&["validate", "--quiet", file.to_str().expect("utf-8 path")]);
    assert!(!stdout(&quiet).contains("ignored:"));
}

#[test]
fn render_output_reads_back_as_the_same_config() {
    let file = corpus_dir("kubevirt").join("fedora-kernelboot.yaml");
    let path = file.to_str().expect("utf-8 path");
    let json = vmpod(&["render", "--output", "json", path]);
    assert!(json.status.success(), "{}", stderr(&json));
    let from_json: spec::VmConfig =
        serde_json::from_slice(&json.stdout).expect("render --output json is a VmConfig");
    let yaml = vmpod(&["render", path]);
    let from_yaml: spec::VmConfig =
        serde_norway::from_slice(&yaml.stdout).expect("render is a VmConfig");
    assert_eq!(from_json, from_yaml);
    let documents = spec::read_file(&file).expect("loads");
    let Some(Document::Vm(definition)) = documents.first() else {
        panic!("no VM")
    };
    let parsed = definition.outcome.as_ref().expect("valid");
    assert_eq!(
        from_yaml, parsed.config,
        "render → parse gives the same VmConfig"
    );
    assert!(stderr(&yaml).contains("vmpod: info: ignored spec.template.spec.evictionStrategy"));
    assert_eq!(from_yaml.validate(), Ok(()), "a rendered config validates");
    // A rendered config edited by hand is checked again when read back.
    let mut edited = from_yaml;
    edited.cpu.sockets = 3;
    edited.cpu.cores = 65;
    let problems = edited.validate().expect_err("65 cores per socket");
    assert_eq!(problems[0].path, "cpu");
    assert!(
        problems[0]
            .to_string()
            .starts_with("cpu: 65 cores per socket"),
        "{problems:?}"
    );
}

#[test]
fn topologies_the_madt_cannot_list_are_refused_with_their_path() {
    let text = r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "wide"},
        "spec": {"domain": {"cpu": {"sockets": 5, "cores": 33}, "memory": {"guest": "64Mi"},
                 "firmware": {"kernelBoot": {"container": {"kernelPath": "/k"}}}}}}"#;
    let documents = spec::parse_documents(text.as_bytes()).expect("parses");
    let Some(Document::Vm(definition)) = documents.first() else {
        panic!("no VM")
    };
    let problems = definition.outcome.as_ref().expect_err("refused");
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0]
            .starts_with("spec.domain.cpu: this topology numbers its vCPUs' APIC ids up to 288"),
        "{shown:?}"
    );
}

#[test]
fn missing_and_oversized_files_fail_with_a_message() {
    let missing = vmpod(&["validate", "/nonexistent/vm.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("cannot read /nonexistent/vm.yaml"),
        "{}",
        stderr(&missing)
    );
    assert!(
        stderr(&missing).contains("caused by: No such file"),
        "{}",
        stderr(&missing)
    );

    let dir = std::env::temp_dir().join(format!("vmpod-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let big = dir.join("big.yaml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    std::fs::write(&big, line.repeat(100 * 1024 * 1024 / line.len())).expect("write 100 MB");
    let output = vmpod(&["validate", big.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("is larger than 8 MiB"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn render_needs_exactly_one_definition() {
    let dir = corpus_dir("kubevirt");
    let two = std::env::temp_dir().join(format!("vmpod-two-{}.yaml", std::process::id()));
    let combined = [dir.join("pvc-vm.yaml"), dir.join("cirros-kernelboot.yaml")]
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    std::fs::write(&two, combined).expect("write");
    let path = two.to_str().expect("utf-8 path");
    let both = vmpod(&["render", path]);
    assert_eq!(both.status.code(), Some(2));
    assert!(
        stderr(&both).contains("2 VM definitions; choose one with --name"),
        "{}",
        stderr(&both)
    );
    let chosen = vmpod(&["render", "--name", "db", path]);
    assert!(chosen.status.success(), "{}", stderr(&chosen));
    assert!(stdout(&chosen).contains("claimName: db-root"));
    let absent = vmpod(&["render", "--name", "nope", path]);
    assert!(stderr(&absent).contains("no VirtualMachine or VirtualMachineInstance named \"nope\""));
    std::fs::remove_file(&two).ok();
}

#[test]
fn help_and_version_are_useful() {
    let help = vmpod(&["--help"]);
    assert!(help.status.success());
    for needle in [
        "launch",
        "validate",
        "render",
        "serial",
        "kubectl exec -it POD -- /vm/serial",
    ] {
        assert!(stdout(&help).contains(needle), "--help lacks {needle}");
    }
    let version = vmpod(&["--version"]);
    assert_eq!(
        stdout(&version).trim(),
        format!("vmpod {}", env!("CARGO_PKG_VERSION"))
    );
    let unknown = vmpod(&["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

const YAML_PIECES: &[&[u8]] = &[
    b":",
    b"- ",
    b"\n",
    b"  ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"---\n",
    b"\"",
    b"'",
    b"#",
    b"null",
    b"-1",
    b"1e999",
    b"Gi",
    b"\t",
    b"\xff",
    b"\0",
    b"? ",
    b"|\n",
    b"name: ",
    b"kind: VirtualMachine\n",
];

fn mutate(seed: &[u8], random: &mut Random) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + random.below(8) {
        let at = random.below(bytes.len() + 1);
        match random.below(4) {
            0 if !bytes.is_empty() => {
                let end = (at + random.below(40)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            1 => {
                let piece = YAML_PIECES[random.below(YAML_PIECES.len())];
                bytes.splice(at..at, piece.iter().copied());
            }
            2 if at < bytes.len() => bytes[at] = random.next() as u8,
            _ => bytes.truncate(at),
        }
    }
    bytes
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seeds: Vec<Vec<u8>> = corpus_files("kubevirt")
        .iter()
        .chain(corpus_files("bad").iter())
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    seeds.push(Vec::new());
    let mut random = Random(0x5eed_1234_abcd_0001);
    let mut accepted = 0;
    for round in 0..4000 {
        let input = if round % 5 == 0 {
            (0..random.below(512))
                .map(|_| random.next() as u8)
                .collect()
        } else {
            let seed = &seeds[random.below(seeds.len())];
            mutate(seed, &mut random)
        };
        // A panic here fails the test; errors are the expected outcome.
        if let Ok(documents) = spec::parse_documents(&input) {
            accepted += documents
                .iter()
                .filter(|d| matches!(d, Document::Vm(def) if def.outcome.is_ok()))
                .count();
        }
    }
    // Mutations of valid examples stay valid often enough to reach the readers.
    assert!(accepted > 0);
}

#[test]
fn arbitrary_files_never_crash_the_binary() {
    let dir = std::env::temp_dir().join(format!("vmpod-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut random = Random(0xfeed_0000_1111_2222);
    let seed = std::fs::read(corpus_dir("kubevirt").join("pvc-vm.yaml")).expect("read");
    for round in 0..12 {
        let file = dir.join(format!("input-{round}.yaml"));
        std::fs::write(&file, mutate(&seed, &mut random)).expect("write");
        let output = vmpod(&["validate", file.to_str().expect("utf-8 path")]);
        let code = output.status.code();
        assert!(
            code == Some(0) || code == Some(2),
            "exit {code:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn links_named_after_a_role_take_that_role() {
    let dir = std::env::temp_dir().join(format!("vmpod-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let link = dir.join("ready");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vmpod"), &link).expect("symlink");
    let output = Command::new(&link).arg("--help").output().expect("runs");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        stdout(&output).contains("Usage: vmpod ready"),
        "{}",
        stdout(&output)
    );
}
