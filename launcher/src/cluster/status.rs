//! The VM's status and Events in the cluster, without an operator: a thread
//! that merge-patches `virtualmachines/status` as KubeVirt's controller
//! would (so `kubectl get vm` shows STATUS and READY), records Events with
//! KubeVirt's reasons, and watches the VirtualMachine so that
//! `spec.running: false` or `runStrategy: Halted` powers the guest down.
//!
//! Runs in the `vmpod-cluster` process, which `vmpod launch` starts and
//! talks to over pipes (`source::remote`), so that the VMM process never
//! parses what the API server sends and stays as small as it was.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use http::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::watch::{watch_stream, Watcher};
use super::{Asked, Cluster, ClusterError, Failure, CORE_EVENTS, EVENTS, VIRTUAL_MACHINES};

/// The VirtualMachine object vmpod reports on.
#[derive(Debug, Clone)]
pub struct VmObject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// The latest generation seen: the spec the next start will run.
    pub desired_generation: i64,
    pub resource_version: String,
    pub run_strategy: String,
    /// Who reports, for Events (`reportingInstance`): the pod's name.
    pub reporter: String,
    /// How long the guest has to power off before vmpod stops it.
    pub grace: Duration,
}

impl VmObject {
    /// Reads what the reporter needs from the object as the API gave it.
    /// `None` (with the reason) when a KubeVirt controller manages it.
    pub fn from_api(object: &Value, reporter: &str, grace: Duration) -> Result<Self, String> {
        let metadata = &object["metadata"];
        let managed = metadata["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|f| f.starts_with("kubevirt.io/"));
        if managed {
            return Err("a KubeVirt controller manages it (it carries KubeVirt's finalizer), so vmpod leaves its status to KubeVirt".into());
        }
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let spec = &object["spec"];
        let run_strategy = match (spec["runStrategy"].as_str(), spec["running"].as_bool()) {
            (Some(strategy), _) => strategy.to_owned(),
            (None, Some(false)) => "Halted".to_owned(),
            _ => "Always".to_owned(),
        };
        Ok(VmObject {
            namespace: text(&metadata["namespace"]),
            name: text(&metadata["name"]),
            uid: text(&metadata["uid"]),
            generation: metadata["generation"].as_i64().unwrap_or(0),
            desired_generation: metadata["generation"].as_i64().unwrap_or(0),
            resource_version: text(&metadata["resourceVersion"]),
            run_strategy,
            reporter: reporter.to_owned(),
            grace,
        })
    }
}

/// Whether this version of the object asks for the VM to be down.
pub fn wants_halt(object: &Value) -> bool {
    let spec = &object["spec"];
    spec["running"].as_bool() == Some(false) || spec["runStrategy"].as_str() == Some("Halted")
}

/// KubeVirt's `printableStatus` values vmpod reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
}

impl Phase {
    fn printable(self) -> &'static str {
        match self {
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Paused => "Paused",
            Phase::Stopping => "Stopping",
            Phase::Stopped => "Stopped",
        }
    }
}

/// The merge patch for `virtualmachines/status` in `phase`.
pub fn status_patch(vm: &VmObject, phase: Phase, now: &str) -> Value {
    let running = matches!(phase, Phase::Running | Phase::Paused);
    let ready = phase == Phase::Running;
    let condition = |kind: &str, on: bool, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": if on { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        })
    };
    let mut conditions = vec![condition(
        "Ready",
        ready,
        if ready { "" } else { "NotRunning" },
        if ready {
            ""
        } else {
            "the guest is not running"
        },
    )];
    if phase == Phase::Paused {
        conditions.push(condition(
            "Paused",
            true,
            "PausedByUser",
            "the VM was paused through QMP or the monitor",
        ));
    }
    json!({
        "status": {
            "created": running || phase == Phase::Stopping,
            "ready": ready,
            "printableStatus": phase.printable(),
            "runStrategy": vm.run_strategy,
            "observedGeneration": vm.generation,
            "desiredGeneration": vm.desired_generation,
            "conditions": conditions,
        }
    })
}

/// An Event about the VM, in `events.k8s.io/v1` form.
pub fn event(vm: &VmObject, reason: &str, note: &str, warning: bool, now: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", vm.name), "namespace": vm.namespace},
        "eventTime": now,
        "reportingController": "vmpod.io/vmpod",
        "reportingInstance": vm.reporter,
        "action": reason,
        "reason": reason,
        "note": note,
        "type": if warning { "Warning" } else { "Normal" },
        "regarding": regarding(vm),
    })
}

fn regarding(vm: &VmObject) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "namespace": vm.namespace,
        "name": vm.name,
        "uid": vm.uid,
    })
}

/// The same Event in the core `v1` group, for clusters that refuse the other.
pub fn core_event(vm: &VmObject, reason: &str, note: &str, warning: bool, now: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", vm.name), "namespace": vm.namespace},
        "involvedObject": regarding(vm),
        "reason": reason,
        "message": note,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": "vmpod", "host": vm.reporter},
        "reportingComponent": "vmpod.io/vmpod",
        "reportingInstance": vm.reporter,
        "firstTimestamp": now.split('.').next().map(|s| format!("{s}Z")),
        "lastTimestamp": now.split('.').next().map(|s| format!("{s}Z")),
        "count": 1,
    })
}

/// `2026-11-24T21:04:05.123456Z`: Kubernetes' MicroTime.
pub fn micro_time(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs();
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// What the reporter hears of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Running,
    Paused,
    Stopping,
    /// The VM has ended; how, for the Event.
    Ended(String),
    /// The VM could not run (or stopped on an error); why.
    Failed(String),
}

/// What the reporter asks of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Press the power button (the spec says the VM should be off).
    Powerdown,
    /// Stop it now (it did not power off within its grace period).
    Quit,
}

/// Reports `Starting`, then follows the VM until [`Heard::Ended`] (or
/// until `heard` closes, which means vmpod is gone).
pub fn follow_vm(
    cluster: &Cluster,
    vm: VmObject,
    heard: mpsc::UnboundedReceiver<Heard>,
    ask: &dyn Fn(Ask),
) {
    let mut state = State {
        cluster,
        vm,
        status_allowed: true,
        events_allowed: [true, true],
        ask,
        phase: Phase::Starting,
    };
    cluster.runtime().block_on(state.follow(heard));
}

struct State<'c> {
    cluster: &'c Cluster,
    vm: VmObject,
    status_allowed: bool,
    /// events.k8s.io, then core v1.
    events_allowed: [bool; 2],
    ask: &'c dyn Fn(Ask),
    phase: Phase,
}

impl State<'_> {
    async fn follow(&mut self, mut messages: mpsc::UnboundedReceiver<Heard>) {
        self.report(Phase::Starting).await;
        let mut halt_deadline: Option<tokio::time::Instant> = None;
        let watcher = Watcher {
            cluster: self.cluster,
            namespace: self.vm.namespace.clone(),
            name: self.vm.name.clone(),
        };
        let mut watch = Box::pin(watch_stream(
            watcher.clone(),
            self.vm.resource_version.clone(),
        ));
        loop {
            let deadline = async {
                match halt_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                message = messages.recv() => match message {
                    Some(Heard::Running) => self.on_phase(Phase::Running).await,
                    Some(Heard::Paused) => self.on_phase(Phase::Paused).await,
                    Some(Heard::Stopping) => self.on_phase(Phase::Stopping).await,
                    ended => {
                        let how = match ended {
                            Some(Heard::Ended(how)) => how,
                            Some(Heard::Failed(why)) => {
                                self.record("SyncFailed", &why, true).await;
                                format!("failed: {why}")
                            }
                            _ => "vmpod ended".to_owned(),
                        };
                        self.report(Phase::Stopped).await;
                        self.record("Stopped", &format!("The VM stopped: {how}"), false).await;
                        return;
                    }
                },
                change = watch.next() => match change {
                    Some(object) => {
                        if wants_halt(&object) && halt_deadline.is_none() {
                            log::info!("{} asks for the VM to stop (spec.running: false or runStrategy: Halted): pressing the power button", self.vm.name);
                            self.vm.run_strategy = "Halted".into();
                            (self.ask)(Ask::Powerdown);
                            self.report(Phase::Stopping).await;
                            self.record("ShuttingDown", "Signaled graceful shutdown: the VM's spec asks for it to stop", false).await;
                            halt_deadline = Some(tokio::time::Instant::now() + self.vm.grace);
                        } else if let Some(generation) = object["metadata"]["generation"].as_i64().filter(|g| *g > self.vm.desired_generation) {
                            log::info!("{}'s spec changed (generation {generation}): it applies at the next start, as in KubeVirt", self.vm.name);
                            self.vm.desired_generation = generation;
                            self.report(self.phase).await;
                        }
                    }
                    None => {
                        // The watch failed for good (logged); keep reporting.
                        watch = Box::pin(watch_stream(watcher.clone(), String::new()));
                    }
                },
                () = deadline => {
                    log::warn!("the guest did not power off within its grace period ({:?}): stopping it", self.vm.grace);
                    (self.ask)(Ask::Quit);
                    halt_deadline = None;
                }
            }
        }
    }

    async fn on_phase(&mut self, phase: Phase) {
        if phase == self.phase {
            return;
        }
        let first_run = phase == Phase::Running && self.phase == Phase::Starting;
        self.report(phase).await;
        match phase {
            Phase::Running if first_run => {
                self.record("Started", "Started the virtual machine", false)
                    .await
            }
            Phase::Stopping => {
                self.record("ShuttingDown", "Signaled graceful shutdown", false)
                    .await
            }
            _ => {}
        }
    }

    async fn report(&mut self, phase: Phase) {
        self.phase = phase;
        if !self.status_allowed {
            return;
        }
        let asked = Asked {
            verb: "patch",
            resource: super::Resource {
                plural: "virtualmachines/status",
                ..VIRTUAL_MACHINES
            },
            namespace: self.vm.namespace.clone(),
            name: Some(self.vm.name.clone()),
        };
        let path = VIRTUAL_MACHINES.path(&self.vm.namespace, Some(&self.vm.name), Some("status"));
        let body = status_patch(&self.vm, phase, &micro_time(SystemTime::now()));
        let sent = self
            .cluster
            .send(
                &asked,
                Method::PATCH,
                &path,
                Some("application/merge-patch+json"),
                Some(body.to_string().into_bytes()),
            )
            .await;
        match sent {
            Ok(_) => log::debug!("{} status: {}", self.vm.name, phase.printable()),
            Err(Failure::Error(error @ ClusterError::Forbidden { .. })) => {
                log::warn!("{error}; vmpod goes on without reporting the VM's status");
                self.status_allowed = false;
            }
            Err(Failure::NotFound) => {
                log::warn!(
                    "{}: the VirtualMachine is gone; its status is no longer reported",
                    self.vm.name
                );
                self.status_allowed = false;
            }
            Err(Failure::Error(error)) => log::warn!("{error}"),
        }
    }

    /// Records an Event in `events.k8s.io/v1`, else in core `v1`.
    async fn record(&mut self, reason: &str, note: &str, warning: bool) {
        let now = micro_time(SystemTime::now());
        for (index, resource) in [EVENTS, CORE_EVENTS].into_iter().enumerate() {
            if !self.events_allowed[index] {
                continue;
            }
            let body = if index == 0 {
                event(&self.vm, reason, note, warning, &now)
            } else {
                core_event(&self.vm, reason, note, warning, &now)
            };
            let asked = Asked {
                verb: "create",
                resource,
                namespace: self.vm.namespace.clone(),
                name: None,
            };
            let path = resource.path(&self.vm.namespace, None, None);
            let sent = self
                .cluster
                .send(
                    &asked,
                    Method::POST,
                    &path,
                    Some("application/json"),
                    Some(body.to_string().into_bytes()),
                )
                .await;
            match sent {
                Ok(_) => return,
                Err(Failure::Error(
                    error @ (ClusterError::Forbidden { .. } | ClusterError::NotServed { .. }),
                )) => {
                    self.events_allowed[index] = false;
                    if !self.events_allowed.contains(&true) {
                        log::warn!("{error}; vmpod goes on without recording Events");
                    }
                }
                Err(Failure::NotFound) => self.events_allowed[index] = false,
                Err(Failure::Error(error)) => {
                    log::warn!("{error}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmObject {
        VmObject::from_api(
            &json!({"metadata": {"name": "demo", "namespace": "lab", "uid": "u-1", "generation": 3, "resourceVersion": "42"}, "spec": {"running": true}}),
            "demo-pod",
            Duration::from_secs(30),
        )
        .expect("not managed")
    }

    #[test]
    fn status_patches_read_as_kubevirt_writes_them() {
        let running = status_patch(&vm(), Phase::Running, "2026-11-24T10:00:00.000000Z");
        let status = &running["status"];
        assert_eq!(status["printableStatus"], "Running");
        assert_eq!(status["ready"], true);
        assert_eq!(status["created"], true);
        assert_eq!(status["runStrategy"], "Always");
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "True");
        let paused = status_patch(&vm(), Phase::Paused, "t");
        assert_eq!(paused["status"]["ready"], false);
        assert_eq!(paused["status"]["conditions"][1]["type"], "Paused");
        assert_eq!(paused["status"]["conditions"][1]["reason"], "PausedByUser");
        let stopped = status_patch(&vm(), Phase::Stopped, "t");
        assert_eq!(stopped["status"]["created"], false);
        assert_eq!(stopped["status"]["printableStatus"], "Stopped");
    }

    #[test]
    fn a_vm_kubevirt_manages_is_left_alone() {
        let managed = json!({"metadata": {"name": "x", "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"]}});
        assert!(VmObject::from_api(&managed, "p", Duration::ZERO).is_err());
    }

    #[test]
    fn halting_specs() {
        assert!(wants_halt(&json!({"spec": {"running": false}})));
        assert!(wants_halt(&json!({"spec": {"runStrategy": "Halted"}})));
        assert!(!wants_halt(&json!({"spec": {"runStrategy": "Always"}})));
    }

    #[test]
    fn micro_time_is_rfc3339_with_microseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_000);
        assert_eq!(micro_time(at), "2026-11-18T11:06:40.123456Z");
        assert_eq!(
            micro_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
