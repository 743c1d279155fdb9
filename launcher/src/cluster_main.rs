//! `vmpod-cluster`: vmpod's helper for everything that talks to the
//! Kubernetes API (and https URLs). `vmpod launch` runs
//! `vmpod-cluster resolve [NAME] [--file F|--configmap M[/K]|--url U]`:
//! it prints the resolved VM as one JSON line on stdout and, when the VM's
//! status is to be reported, stays: it reads what the VM does from stdin
//! (`running`, `paused`, `stopping`, `ended HOW`, `failed WHY`) and writes what the VMM
//! should do to stdout (`powerdown`, `quit`). Its log is vmpod's (stderr).
//!
//! Exit status: 0 done, 1 runtime failure, 2 no usable definition.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use vmpod::cluster::status::{self, Ask, Heard, VmObject};
use vmpod::logging::{report, report_problems};
use vmpod::source::remote::Answer;
use vmpod::source::{self, Resolved, SourceError};

#[derive(Parser)]
#[command(
    name = "vmpod-cluster",
    version,
    about = "vmpod's helper for the Kubernetes API (run by vmpod launch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find the VM's definition, print it as a JSON line, and report its
    /// status while stdin stays open (when it is a VirtualMachine object)
    Resolve {
        #[arg(value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[arg(long, value_name = "NAME[/KEY]")]
        configmap: Option<String>,
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// Exit status for a definition that cannot be used.
const DEFINITION_ERROR: u8 = 2;

fn main() -> ExitCode {
    vmpod::logging::init();
    // vmpod ends this helper by closing its stdin, after the VM's last
    // report; a Ctrl-C or SIGTERM meant for vmpod must not end it first.
    let _signals = vmpod::signals::SignalFd::take(&[libc::SIGINT, libc::SIGTERM]);
    let Command::Resolve {
        vm,
        file,
        configmap,
        url,
    } = Cli::parse_from(std::env::args_os().collect::<Vec<OsString>>()).command;
    let from = source::From::choose(file, configmap.as_deref(), url);
    let found = match source::find(vm.as_deref(), &from) {
        Ok(found) => found,
        Err(SourceError::Invalid { origin, problems }) => {
            report_problems(&format!("vmpod: error: {origin}"), &problems);
            return ExitCode::from(DEFINITION_ERROR);
        }
        Err(error) => {
            report(&error);
            return ExitCode::from(DEFINITION_ERROR);
        }
    };
    let grace = Duration::from_secs(found.valid.config.termination_grace_period_seconds);
    let name = found.valid.config.identity.name.clone();
    let reporting = found.status_target.and_then(|(cluster, object)| {
        match VmObject::from_api(&object, &found.pod, grace) {
            Ok(vm) => Some((cluster, vm)),
            Err(why) => {
                log::info!("VirtualMachine {name}: {why}");
                None
            }
        }
    });
    let resolved = Resolved {
        valid: found.valid,
        origin: found.origin,
    };
    let answer = Answer::new(&resolved, reporting.is_some());
    let line = match serde_json::to_string(&answer) {
        Ok(line) => line,
        Err(error) => {
            report(&error);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let Some((cluster, vm)) = reporting else {
        return ExitCode::SUCCESS;
    };
    let (heard, hearing) = tokio::sync::mpsc::unbounded_channel();
    let reader = std::thread::Builder::new()
        .name("vmpod-says".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                let said = match line
                    .split_once(' ')
                    .map_or((line.as_str(), ""), |(a, b)| (a, b))
                {
                    ("running", _) => Heard::Running,
                    ("paused", _) => Heard::Paused,
                    ("stopping", _) => Heard::Stopping,
                    ("ended", how) => Heard::Ended(how.to_owned()),
                    ("failed", why) => Heard::Failed(why.to_owned()),
                    _ => continue,
                };
                if heard.send(said).is_err() {
                    return;
                }
            }
        });
    if let Err(error) = reader {
        report(&error);
        return ExitCode::FAILURE;
    }
    status::follow_vm(&cluster, vm, hearing, &|ask| {
        let word = match ask {
            Ask::Powerdown => "powerdown",
            Ask::Quit => "quit",
        };
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{word}").and_then(|()| stdout.flush());
    });
    ExitCode::SUCCESS
}
