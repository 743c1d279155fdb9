//! The `vmpod` multi-call binary: `launch`, `validate`, `render`, and the
//! client roles (`serial`, `monitor`, `qmp`, `vnc`, `ready`), which it also
//! takes when invoked through a link of that name (`/vm/serial`, …).
//!
//! Exit status: 0 success, 1 runtime failure, 2 bad definition or usage.

mod cli;

use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmpod::api::{DEFAULT_RUN_DIR, MONITOR_SOCKET, QMP_SOCKET, VNC_SOCKET};

const AFTER_HELP: &str = "\
In a pod, the image's entrypoint runs `vmpod launch`. Reach the VM with:
  kubectl exec -it POD -- /vm/serial      serial console (Ctrl-] detaches)
  kubectl exec -it POD -- /vm/monitor     human monitor
  kubectl exec -i  POD -- /vm/qmp         QMP, for QEMU's client libraries
  socat SYSTEM:\"kubectl exec -i POD -- /vm/vnc\" tcp-listen:5942   then a VNC viewer

Check a definition before deploying it:
  vmpod validate vm.yaml       every problem, with its YAML path
  vmpod render vm.yaml         the VM vmpod would build from it
  vmpod inspect-disk disk.img  what vmpod would boot from a disk image

Set VMPOD_LOG=debug for more detail.";

#[derive(Parser)]
#[command(
    name = "vmpod",
    version,
    about = "A VM in a pod: runs a KubeVirt-shaped VM as a KVM microVM inside its own container",
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the VM of a definition and serve its consoles (the pod's entrypoint)
    ///
    /// The definition comes from --file, --url or --configmap, else
    /// /etc/vmpod/vm.yaml when it exists, else the cluster's VirtualMachine
    /// (or VirtualMachineInstance) of the VM's name. The name: NAME, else VM_NAME,
    /// else the pod's label vmpod.io/vm, else the hostname. The namespace:
    /// POD_NAMESPACE, the service account's, the kubeconfig context's, default.
    #[command(verbatim_doc_comment)]
    Launch {
        /// Which VM (in a file holding several, or in the cluster)
        #[arg(value_name = "NAME")]
        vm: Option<String>,
        /// VM definition: a VirtualMachine or VirtualMachineInstance (YAML or
        /// JSON), or a ConfigMap or List holding them
        #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "configmap")]
        file: Option<PathBuf>,
        /// Read the definition from this ConfigMap in the VM's namespace
        /// (the key holding it, when the ConfigMap has several)
        #[arg(long, value_name = "NAME[/KEY]")]
        configmap: Option<String>,
        /// Fetch the definition from this https URL
        #[arg(long, value_name = "URL", conflicts_with_all = ["file", "configmap"])]
        url: Option<String>,
        /// Same as NAME
        #[arg(long, hide = true, conflicts_with = "vm")]
        name: Option<String>,
        /// Where the control sockets go (serial.sock, …)
        #[arg(long, env = "VMPOD_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
        run_dir: PathBuf,
        /// Bytes of console output replayed to a serial client when it attaches
        #[arg(long, default_value_t = vmpod::control::serial::DEFAULT_SCROLLBACK, value_name = "BYTES")]
        serial_scrollback: usize,
        /// Bytes a serial client may fall behind before it is detached
        #[arg(long, default_value_t = vmpod::control::serial::DEFAULT_CLIENT_BACKLOG, value_name = "BYTES")]
        serial_client_backlog: usize,
        /// Bytes of console output held for stdout while it is not read;
        /// beyond that, stdout misses output (the serial console keeps it)
        #[arg(long, default_value_t = vmpod::vmm::console::STDOUT_BUFFER, value_name = "BYTES")]
        stdout_buffer: usize,
        /// Where emptyDisks are created (an emptyDir volume in a pod)
        #[arg(long, env = "VMPOD_SCRATCH_DIR", default_value = vmpod::launch::DEFAULT_SCRATCH_DIR, value_name = "DIR")]
        scratch_dir: PathBuf,
        /// Executables run in name order before the VM boots (run-parts style);
        /// a failing one stops the launch
        #[arg(long, env = "VMPOD_LAUNCH_DIR", default_value = vmpod::hooks::DEFAULT_HOOK_DIR, value_name = "DIR")]
        launch_dir: PathBuf,
        /// Where the pod mounts the images the definition names: a
        /// containerDisk's at DIR/<volume>, kernelBoot's at DIR/kernelBoot
        #[arg(long, env = "VMPOD_IMAGES_DIR", default_value = vmpod::pod::DEFAULT_IMAGES_DIR, value_name = "DIR")]
        images_dir: PathBuf,
    },
    /// Check VM definitions and print every problem with its YAML path
    Validate {
        /// Files holding VirtualMachine, VirtualMachineInstance, ConfigMap or List objects;
        /// other kinds of object are skipped
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Do not list the fields that were accepted but change nothing
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Print the VM configuration a definition resolves to, or with --pod
    /// the Pod that runs the VM with vmpod
    ///
    /// --pod prints a ConfigMap holding FILE and a Pod (or, with
    /// --deployment N, a Deployment) that runs its VM: /dev/kvm from the
    /// node, the definition, each image the definition names as an image
    /// volume (Kubernetes 1.35+; --copy-images copies them with init
    /// containers instead), the /vm/ready readiness probe, a grace period
    /// of the VM's plus 10 s, resources that fit the VM, and the sysctls
    /// passt needs for the pod network.
    #[command(verbatim_doc_comment)]
    Render {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Which VM, when the file holds several
        #[arg(long)]
        name: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Yaml)]
        output: Format,
        /// Print the Pod that runs the VM instead of its configuration
        #[arg(long)]
        pod: bool,
        /// A Deployment of N replicas instead of a Pod (each VM gets its own identity)
        #[arg(long, value_name = "N", requires = "pod")]
        deployment: Option<u32>,
        /// The vmpod image the pod runs
        #[arg(long, value_name = "IMAGE", default_value = vmpod::pod::render::DEFAULT_IMAGE, requires = "pod")]
        image: String,
        /// Copy the definition's images with init containers (clusters
        /// without image volumes, podman 4) instead of mounting them
        #[arg(long, requires = "pod")]
        copy_images: bool,
        /// Read the definition from the cluster's VirtualMachine (service
        /// account vmpod, manifests/rbac.yaml) instead of a ConfigMap
        #[arg(long, requires = "pod")]
        from_api: bool,
    },
    /// Put vmpod, its loader and libraries into DIR (render --pod --copy-images)
    #[command(hide = true)]
    StageTools {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Copy files of this container's image below DEST (render --pod --copy-images)
    #[command(hide = true)]
    CopyFiles {
        #[arg(value_name = "DEST")]
        destination: PathBuf,
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show what vmpod finds on a disk image and would boot from it:
    /// partitions, file systems, boot entries, kernel, initrd and command line
    InspectDisk {
        /// A raw or qcow2 disk image (a cloud image, a containerDisk's file)
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
    },
    /// Attach to the VM's serial console (also as /vm/serial)
    Serial {
        /// The run directory of the vmpod to attach to
        #[arg(long, env = "VMPOD_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
        run_dir: PathBuf,
        /// Key that detaches an interactive session: ^] (default), ^ and a letter, or none
        #[arg(long, default_value = "^]", value_parser = vmpod::helpers::terminal::parse_escape)]
        escape: vmpod::helpers::terminal::EscapeKey,
    },
    /// Open the VM's human monitor (also as /vm/monitor)
    Monitor {
        #[arg(long, env = "VMPOD_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
        run_dir: PathBuf,
    },
    /// Relay the VM's QMP socket to stdio (also as /vm/qmp)
    Qmp {
        #[arg(long, env = "VMPOD_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
        run_dir: PathBuf,
    },
    /// Relay the VM's VNC socket to stdio, binary-clean (also as /vm/vnc):
    /// socat TCP-LISTEN:5900,reuseaddr,fork EXEC:"kubectl exec -i POD -- /vm/vnc"
    Vnc {
        #[arg(long, env = "VMPOD_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
        run_dir: PathBuf,
        /// Serve VNC over WebSocket on ADDR:PORT instead (noVNC, KubeVirt's
        /// vnc subresource clients), e.g. 127.0.0.1:5959 for kubectl port-forward
        #[arg(long, value_name = "ADDR:PORT")]
        websocket: Option<std::net::SocketAddr>,
        /// The bearer token WebSocket viewers must present (required unless
        /// ADDR is a loopback address): a file holding it, e.g. a Secret's key
        #[arg(long, value_name = "FILE", requires = "websocket")]
        token_file: Option<PathBuf>,
    },
    /// Exit 0 once the VM is ready, for an exec readinessProbe (also as /vm/ready)
    Ready {
        #[arg(long, env = "VMPOD_RUN_DIR", default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
        run_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// The client roles a link name selects, busybox style.
const ROLES: &[&str] = &["serial", "monitor", "qmp", "vnc", "ready"];

/// `/vm/serial --x` becomes `vmpod serial --x`.
fn arguments_with_role(mut args: Vec<OsString>) -> Vec<OsString> {
    let invoked_as = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .and_then(|name| name.to_str())
        .map(str::to_owned);
    if let Some(role) = invoked_as.filter(|name| ROLES.contains(&name.as_str())) {
        args.splice(0..1, [OsString::from("vmpod"), OsString::from(role)]);
    }
    args
}

pub use vmpod::logging::report;

fn relay_result<T>(result: Result<T, vmpod::helpers::serial::SerialError>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    vmpod::logging::init();
    let cli = Cli::parse_from(arguments_with_role(std::env::args_os().collect()));
    match cli.command {
        Command::Launch {
            vm,
            file,
            configmap,
            url,
            name,
            run_dir,
            serial_scrollback,
            serial_client_backlog,
            stdout_buffer,
            scratch_dir,
            launch_dir,
            images_dir,
        } => {
            let options = vmpod::launch::LaunchOptions {
                run_dir,
                serial_scrollback,
                serial_client_backlog,
                stdout_buffer,
                scratch_dir,
                hook_dir: launch_dir,
                images_dir,
            };
            let vm = vm.or(name);
            let mut helper_args: Vec<OsString> = Vec::new();
            if let Some(vm) = &vm {
                helper_args.push(vm.into());
            }
            for (flag, value) in [
                ("--file", file.as_ref().map(|f| f.as_os_str().to_owned())),
                ("--configmap", configmap.as_ref().map(OsString::from)),
                ("--url", url.as_ref().map(OsString::from)),
            ] {
                if let Some(value) = value {
                    helper_args.extend([OsString::from(flag), value]);
                }
            }
            let from = vmpod::source::From::choose(file, configmap.as_deref(), url);
            cli::launch(vm.as_deref(), &from, &helper_args, &options)
        }
        Command::Validate { files, quiet } => cli::validate(&files, quiet),
        Command::Render {
            file,
            name,
            output,
            pod,
            deployment,
            image,
            copy_images,
            from_api,
        } => {
            if pod {
                let options = vmpod::pod::render::PodOptions {
                    image,
                    replicas: deployment,
                    copy_images,
                    from_api,
                };
                cli::render_pod(&file, name.as_deref(), output, &options)
            } else {
                cli::render(&file, name.as_deref(), output)
            }
        }
        Command::StageTools { dir } => cli::stage_tools(&dir),
        Command::CopyFiles { destination, paths } => cli::copy_files(&destination, &paths),
        Command::InspectDisk { image } => cli::inspect_disk(&image),
        Command::Serial { run_dir, escape } => {
            relay_result(vmpod::helpers::serial::attach(&run_dir, escape.0))
        }
        Command::Monitor { run_dir } => relay_result(vmpod::helpers::serial::relay_plain(
            &run_dir,
            MONITOR_SOCKET,
        )),
        Command::Qmp { run_dir } => {
            relay_result(vmpod::helpers::serial::relay_plain(&run_dir, QMP_SOCKET))
        }
        Command::Ready { run_dir } => match vmpod::helpers::ready::check(&run_dir) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(reason) => {
                eprintln!("{reason}");
                ExitCode::FAILURE
            }
        },
        Command::Vnc {
            run_dir,
            websocket: Some(address),
            token_file,
        } => {
            let token = match (token_file, std::env::var("VMPOD_VNC_TOKEN")) {
                (Some(path), _) => vmpod::helpers::websocket::read_token(&path),
                (None, Ok(token)) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
                (None, _) => Ok(None),
            };
            let served = token.and_then(|token| {
                vmpod::helpers::websocket::serve(vmpod::helpers::websocket::Options {
                    address,
                    token,
                    run_dir,
                })
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    report(&error);
                    ExitCode::from(2)
                }
            }
        }
        Command::Vnc { run_dir, .. } => {
            relay_result(vmpod::helpers::serial::relay_binary(&run_dir, VNC_SOCKET))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn link_names_select_a_role() {
        assert_eq!(
            arguments_with_role(args(&["/vm/serial", "-x"])),
            args(&["vmpod", "serial", "-x"])
        );
        assert_eq!(arguments_with_role(args(&["qmp"])), args(&["vmpod", "qmp"]));
        assert_eq!(
            arguments_with_role(args(&["/usr/bin/vmpod", "render"])),
            args(&["/usr/bin/vmpod", "render"])
        );
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
