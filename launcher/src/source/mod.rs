//! Where the VM's definition comes from and which VM this pod runs: a file
//! (a mounted ConfigMap or Secret), a ConfigMap or a VirtualMachine (or
//! VirtualMachineInstance) from the Kubernetes API; the VM's name and
//! namespace guessed as [`whoami`] says; instancetypes resolved from the
//! cluster, else the bundled copy; a replica's identity when a controller
//! runs the definition in several pods.
//!
//! Main thread, before boot: [`find_offline`] in vmpod itself, [`find`] in
//! the `vmpod-cluster` helper, which [`remote`] runs and talks to. Hands
//! `spec` the definition and gets a `VmConfig` back.

pub mod remote;
pub mod whoami;

use std::path::{Path, PathBuf};

use crate::cluster::{self, Cluster, ClusterError};
use crate::spec::instancetype::{self, Found as FoundType, Kind, Lookup};
use crate::spec::{self, Context, Definition, Document, Problem, Valid};

/// The definition file used when none is named and it exists.
pub const DEFAULT_FILE: &str = "/etc/vmpod/vm.yaml";

/// Where to look for the definition.
#[derive(Debug, Clone)]
pub enum From {
    File(PathBuf),
    /// A ConfigMap in the VM's namespace, and optionally which key.
    ConfigMap {
        name: String,
        key: Option<String>,
    },
    /// A VirtualMachine, else a VirtualMachineInstance, named as the VM.
    Cluster,
    /// An https URL serving the definition (YAML or JSON).
    Url(String),
}

impl From {
    /// `--file`, `--url` or `--configmap`, else the default file when it
    /// exists, else the cluster.
    pub fn choose(file: Option<PathBuf>, configmap: Option<&str>, url: Option<String>) -> From {
        if let Some(file) = file {
            return From::File(file);
        }
        if let Some(url) = url {
            return From::Url(url);
        }
        if let Some(spec) = configmap {
            let (name, key) = match spec.split_once('/') {
                Some((name, key)) => (name.to_owned(), Some(key.to_owned())),
                None => (spec.to_owned(), None),
            };
            return From::ConfigMap { name, key };
        }
        if Path::new(DEFAULT_FILE).exists() {
            From::File(DEFAULT_FILE.into())
        } else {
            From::Cluster
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Load(#[from] spec::LoadError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("no Kubernetes API is configured (no KUBECONFIG, no ~/.kube/config, not in a pod with a service account), so the definition cannot come from {wanted}: mount it as a file (--file, default {DEFAULT_FILE}) or give vmpod access to the cluster")]
    NoCluster { wanted: String },
    #[error("cannot tell which VM to run: name it (vmpod launch NAME, or VM_NAME), or label the pod vmpod.io/vm=NAME")]
    NoName,
    #[error("{0}")]
    NotFound(String),
    #[error("vmpod-cluster failed (exit status {code})")]
    HelperFailed { code: u8 },
    #[error("{origin}: {} problem{}", problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

/// The VM to run and where its definition came from.
#[derive(Debug)]
pub struct Resolved {
    pub valid: Valid,
    pub origin: String,
}

/// A definition file when no cluster is configured: the bundled
/// instancetypes, and the pod's labels from the downward API only. Uses
/// nothing of the cluster client, so vmpod runs it in its own process.
pub fn find_offline(explicit_name: Option<&str>, path: &Path) -> Result<Resolved, SourceError> {
    let facts = whoami::Facts::gather();
    let replica_in_pod = replica_pod(&facts);
    let context = Context {
        instancetypes: &instancetype::Bundled,
        replica_in_pod: replica_in_pod.as_deref(),
    };
    let documents = spec::read_file_in(path, &context)?;
    let (valid, origin) = pick(
        documents,
        explicit_name,
        &facts,
        &path.display().to_string(),
    )?;
    Ok(Resolved { valid, origin })
}

/// The pod's name when its labels say a controller runs several like it.
fn replica_pod(facts: &whoami::Facts) -> Option<String> {
    let controller = whoami::replica_controller(facts.pod_labels.as_ref()?)?;
    let pod = facts.pod()?.to_owned();
    log::info!("this pod is one of a {controller}'s: the VM gets an identity of its own, derived from the pod's name {pod}");
    Some(pod)
}

/// The VM to run, and what vmpod keeps for reporting on it.
pub struct Found {
    pub valid: Valid,
    pub origin: String,
    /// The cluster's VirtualMachine object, when that is the definition
    /// and this pod is the VM's only one: its status can be reported.
    pub status_target: Option<(Cluster, serde_json::Value)>,
    /// The pod's name (Events name it as their reporter).
    pub pod: String,
}

/// Finds the VM this pod runs.
pub fn find(explicit_name: Option<&str>, from: &From) -> Result<Found, SourceError> {
    let mut facts = whoami::Facts::gather();
    let cluster = match Cluster::from_environment() {
        Ok(cluster) => cluster,
        Err(error) if matches!(from, From::File(_) | From::Url(_)) => {
            log::warn!("{error}; going on without the cluster");
            None
        }
        Err(error) => return Err(error.into()),
    };
    if let Some(cluster) = &cluster {
        log::info!(
            "Kubernetes API at {} ({})",
            cluster.server,
            cluster.configured_by
        );
    }
    let namespace = whoami::namespace(
        &facts,
        cluster.as_ref().map(|c| c.default_namespace.as_str()),
    );
    if facts.pod_labels.is_none() {
        facts.pod_labels = pod_labels(cluster.as_ref(), &facts, &namespace.value);
    }
    let replica_in_pod = replica_pod(&facts);
    let lookup = ClusterLookup {
        cluster: cluster.as_ref(),
    };
    let context = Context {
        instancetypes: &lookup,
        replica_in_pod: replica_in_pod.as_deref(),
    };
    let pod = facts.pod().unwrap_or("vmpod").to_owned();
    let (documents, origin) = match from {
        From::File(path) => (
            spec::read_file_in(path, &context)?,
            path.display().to_string(),
        ),
        From::Url(url) => {
            let text = cluster::fetch_url(url)?;
            (parse_text(&text, url, &context)?, url.clone())
        }
        From::ConfigMap { name: map, key } => {
            let cluster = cluster.as_ref().ok_or_else(|| SourceError::NoCluster {
                wanted: format!("ConfigMap {map}"),
            })?;
            from_config_map(cluster, &namespace, map, key.as_deref(), &context)?
        }
        From::Cluster => {
            let connected = cluster.as_ref().ok_or_else(|| SourceError::NoCluster {
                wanted: "a VirtualMachine in the cluster".into(),
            })?;
            let name = whoami::vm_name(explicit_name, &facts).ok_or(SourceError::NoName)?;
            let (object, kind) = from_cluster(connected, &namespace, &name)?;
            let origin = format!("{kind} {}/{}", namespace.value, name.value);
            let valid =
                spec::parse_vm_in(&to_yaml_value(&object), &context).map_err(|problems| {
                    SourceError::Invalid {
                        origin: origin.clone(),
                        problems,
                    }
                })?;
            let status_target = cluster
                .filter(|_| kind == "VirtualMachine" && replica_in_pod.is_none())
                .map(|cluster| (cluster, object));
            return Ok(Found {
                valid,
                origin,
                status_target,
                pod,
            });
        }
    };
    let (valid, origin) = pick(documents, explicit_name, &facts, &origin)?;
    Ok(Found {
        valid,
        origin,
        status_target: None,
        pod,
    })
}

/// The definitions in a text fetched from somewhere (`origin` says where).
fn parse_text(text: &str, origin: &str, context: &Context) -> Result<Vec<Document>, SourceError> {
    if text.len() as u64 > spec::MAX_DEFINITION_BYTES {
        return Err(SourceError::NotFound(format!(
            "{origin}: more than {} MiB, not a VM definition",
            spec::MAX_DEFINITION_BYTES >> 20
        )));
    }
    spec::parse_documents_in(text.as_bytes(), context).map_err(|e| SourceError::Invalid {
        origin: origin.to_owned(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("not valid YAML or JSON: {e}"),
        }],
    })
}

/// The definitions in a ConfigMap's data (one key, or every key).
fn from_config_map(
    cluster: &Cluster,
    namespace: &whoami::Chosen,
    map: &str,
    key: Option<&str>,
    context: &Context,
) -> Result<(Vec<Document>, String), SourceError> {
    log::info!("namespace {} (from {})", namespace.value, namespace.from);
    let object = cluster
        .get(cluster::CONFIG_MAPS, &namespace.value, map)?
        .ok_or_else(|| {
            SourceError::NotFound(format!(
                "no ConfigMap {map:?} in namespace {} at {}",
                namespace.value, cluster.server
            ))
        })?;
    let origin = format!("ConfigMap {}/{map}", namespace.value);
    let data = object["data"].as_object().cloned().unwrap_or_default();
    let texts: Vec<(String, String)> = data
        .into_iter()
        .filter(|(k, _)| key.is_none_or(|wanted| wanted == k))
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
        .collect();
    if let (Some(key), true) = (key, texts.is_empty()) {
        return Err(SourceError::NotFound(format!(
            "{origin} has no key {key:?}"
        )));
    }
    let mut documents = Vec::new();
    for (key, text) in texts {
        documents.extend(parse_text(
            &text,
            &format!("{origin} data[{key:?}]"),
            context,
        )?);
    }
    Ok((documents, origin))
}

/// The VirtualMachine of that name, else the VirtualMachineInstance.
fn from_cluster(
    cluster: &Cluster,
    namespace: &whoami::Chosen,
    name: &whoami::Chosen,
) -> Result<(serde_json::Value, &'static str), SourceError> {
    log::info!(
        "VM {} (name from {}, namespace {} from {})",
        name.value,
        name.from,
        namespace.value,
        namespace.from
    );
    for (resource, kind) in [
        (cluster::VIRTUAL_MACHINES, "VirtualMachine"),
        (cluster::VIRTUAL_MACHINE_INSTANCES, "VirtualMachineInstance"),
    ] {
        if let Some(object) = cluster.get(resource, &namespace.value, &name.value)? {
            return Ok((object, kind));
        }
    }
    Err(SourceError::NotFound(format!(
        "no VirtualMachine or VirtualMachineInstance named {:?} in namespace {} at {} (the name came from {}, the namespace from {})",
        name.value, namespace.value, cluster.server, name.from, namespace.from
    )))
}

fn to_yaml_value(object: &serde_json::Value) -> serde_norway::Value {
    serde_norway::to_value(object).unwrap_or(serde_norway::Value::Null)
}

/// The pod's labels from the API when the downward API gave none.
fn pod_labels(
    cluster: Option<&Cluster>,
    facts: &whoami::Facts,
    namespace: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let cluster = cluster?;
    let pod = facts.pod_name.as_deref()?;
    match cluster.get(cluster::PODS, namespace, pod) {
        Ok(Some(object)) => {
            let labels = object["metadata"]["labels"].as_object()?;
            Some(
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect(),
            )
        }
        Ok(None) => None,
        Err(error) => {
            log::info!("{error}; the pod's labels are not used");
            None
        }
    }
}

/// Exactly one valid VM among `documents`: the one named on the command
/// line or by `VM_NAME`; else the only one; else, among several, the one
/// the pod's label or hostname names.
fn pick(
    documents: Vec<Document>,
    explicit_name: Option<&str>,
    facts: &whoami::Facts,
    place: &str,
) -> Result<(Valid, String), SourceError> {
    let empty = documents.is_empty();
    let definitions: Vec<Definition> = documents
        .into_iter()
        .filter_map(|document| match document {
            Document::Vm(definition) => Some(definition),
            Document::Skipped { .. } => None,
        })
        .collect();
    let count = definitions.len();
    let mut wanted = explicit_name.or(facts.vm_name.as_deref());
    let guessed = whoami::vm_name(None, facts);
    if let (None, true, Some(guess)) = (wanted, count > 1, &guessed) {
        if definitions
            .iter()
            .any(|d| definition_name(d) == Some(guess.value.as_str()))
        {
            log::info!("{place}: running {} (named by {})", guess.value, guess.from);
            wanted = Some(guess.value.as_str());
        }
    }
    let mut matching: Vec<Definition> = definitions
        .into_iter()
        .filter(|definition| {
            count == 1 && wanted.is_none()
                || wanted.is_none_or(|w| definition_name(definition) == Some(w))
        })
        .collect();
    match matching.len() {
        1 => {}
        0 if count == 0 => {
            let why = if empty { " (it is empty)" } else { "" };
            return Err(SourceError::NotFound(format!(
                "{place}: no VirtualMachine or VirtualMachineInstance{why}"
            )));
        }
        0 => {
            return Err(SourceError::NotFound(format!(
                "{place}: no VirtualMachine or VirtualMachineInstance named {:?}",
                wanted.unwrap_or_default()
            )))
        }
        many => {
            return Err(SourceError::NotFound(format!(
                "{place}: {many} VM definitions; choose one with vmpod launch NAME (or VM_NAME)"
            )))
        }
    }
    let definition = matching.remove(0);
    let origin = format!("{place}: {}", definition.origin);
    match definition.outcome {
        Ok(valid) => Ok((valid, origin)),
        Err(problems) => Err(SourceError::Invalid { origin, problems }),
    }
}

/// The name in an origin that reads `Kind namespace/name` or `Kind name`.
pub fn definition_name(definition: &Definition) -> Option<&str> {
    let last_word = definition.origin.rsplit(' ').next()?;
    Some(last_word.rsplit('/').next().unwrap_or(last_word))
}

/// Instancetypes and preferences from the cluster, else the bundled copy.
struct ClusterLookup<'c> {
    cluster: Option<&'c Cluster>,
}

impl Lookup for ClusterLookup<'_> {
    fn find(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<FoundType>, String> {
        if let Some(cluster) = self.cluster {
            let resource = cluster::instancetype_resource(kind.plural(), !kind.is_cluster_wide());
            match cluster.get(resource, namespace, name) {
                Ok(Some(object)) => {
                    return Ok(Some(FoundType {
                        spec: to_yaml_value(&object["spec"]),
                        from: format!("the cluster ({})", cluster.server),
                    }))
                }
                Ok(None) | Err(ClusterError::NotServed { .. }) => {}
                Err(error @ ClusterError::Forbidden { .. }) => {
                    log::warn!("{error}; using vmpod's bundled instancetypes");
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        instancetype::Bundled.find(kind, namespace, name)
    }
}
