//! VM definitions: bytes (YAML or JSON, one or many documents) in,
//! validated [`VmConfig`]s or every problem (with its YAML path) out.
//!
//! Owns the KubeVirt subset vmpod implements. Calls nothing outside itself;
//! `source` hands it bytes, the VMM receives the `VmConfig`. Any thread.
#![forbid(unsafe_code)]

pub mod config;
mod devices;
pub mod doc;
mod domain;
pub mod identity;
pub mod instancetype;
mod kubevirt;
pub mod quantity;
pub mod replica;
mod volumes;

use serde::Deserialize;
use serde_norway::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use config::VmConfig;
pub use doc::{Ignored, Problem};
pub use kubevirt::VMPOD_ANNOTATIONS;
pub use volumes::PVC_MOUNT_ROOT;

/// Kubernetes objects are at most ~1.5 MB; anything far larger is a mistake.
pub const MAX_DEFINITION_BYTES: u64 = 8 << 20;

const API_VERSIONS: &[&str] = &["kubevirt.io/v1", "kubevirt.io/v1alpha3"];
const VM_KINDS: &[&str] = &["VirtualMachine", "VirtualMachineInstance"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is larger than {} MiB; a VM definition is a Kubernetes object (at most about 1.5 MB)", path.display(), MAX_DEFINITION_BYTES >> 20)]
    TooLarge { path: PathBuf },
    #[error("{}: not valid YAML or JSON", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
}

/// One VM definition found in a file, valid or not.
#[derive(Debug)]
pub struct Definition {
    /// Where it came from, for messages: `VirtualMachine default/demo`.
    pub origin: String,
    pub outcome: Result<Valid, Vec<Problem>>,
}

#[derive(Debug)]
pub struct Valid {
    pub config: VmConfig,
    /// Fields that were accepted but change nothing, with the reason.
    pub ignored: Vec<Ignored>,
}

/// What one document in a file turned out to be.
// A file holds a handful of documents: boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Document {
    Vm(Definition),
    /// Another kind of object (a Pod, RBAC, …): not a VM definition.
    Skipped {
        origin: String,
    },
}

/// What a definition is read against: where instancetypes and preferences
/// come from, and whether this VM is one replica of many.
pub struct Context<'a> {
    pub instancetypes: &'a dyn instancetype::Lookup,
    /// The pod's name when a Deployment, StatefulSet, … runs this
    /// definition in several pods (see [`replica`]).
    pub replica_in_pod: Option<&'a str>,
}

impl Context<'static> {
    /// No cluster and a single VM: the bundled instancetypes.
    pub fn offline() -> Self {
        Context {
            instancetypes: &instancetype::Bundled,
            replica_in_pod: None,
        }
    }
}

/// Reads a definition file (a mounted ConfigMap key is just a file).
pub fn read_file(path: &Path) -> Result<Vec<Document>, LoadError> {
    read_file_in(path, &Context::offline())
}

/// [`read_file`] against a [`Context`].
pub fn read_file_in(path: &Path, context: &Context) -> Result<Vec<Document>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_DEFINITION_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_DEFINITION_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse_documents_in(&bytes, context).map_err(|source| LoadError::Syntax {
        path: path.to_owned(),
        source,
    })
}

/// Parses every document in a YAML stream (JSON is YAML too).
pub fn parse_documents(bytes: &[u8]) -> Result<Vec<Document>, serde_norway::Error> {
    parse_documents_in(bytes, &Context::offline())
}

/// [`parse_documents`] against a [`Context`].
pub fn parse_documents_in(
    bytes: &[u8],
    context: &Context,
) -> Result<Vec<Document>, serde_norway::Error> {
    let mut values = Vec::new();
    for document in serde_norway::Deserializer::from_slice(bytes) {
        values.push(Value::deserialize(document)?);
    }
    let mut documents = Vec::new();
    for (index, value) in values.iter().enumerate() {
        classify(
            value,
            &format!("document {}", index + 1),
            context,
            &mut documents,
        );
    }
    Ok(documents)
}

/// Parses a single definition (for callers that were handed one object).
pub fn parse_vm(value: &Value) -> Result<Valid, Vec<Problem>> {
    parse_vm_in(value, &Context::offline())
}

/// [`parse_vm`] against a [`Context`]: instancetypes and preferences are
/// written into the template, a replica renamed, before it is read.
pub fn parse_vm_in(value: &Value, context: &Context) -> Result<Valid, Vec<Problem>> {
    let mut diag = doc::Diagnostics::default();
    let mut value = value.clone();
    if text_at(&value, "kind") == Some("VirtualMachine")
        && !instancetype::expand(&mut value, context.instancetypes, &mut diag)
    {
        return Err(diag.problems);
    }
    if let Some(pod) = context.replica_in_pod {
        replica::make_replica(&mut value, pod, &mut diag);
    }
    match kubevirt::read_vm(&value, &mut diag) {
        Some(config) if diag.problems.is_empty() => Ok(Valid {
            config,
            ignored: diag.ignored,
        }),
        _ if diag.problems.is_empty() => Err(vec![Problem {
            path: String::new(),
            message: "could not be read (no specific problem was recorded)".into(),
        }]),
        _ => Err(diag.problems),
    }
}

fn text_at<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

fn describe(value: &Value, kind: &str) -> String {
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| text_at(m, "name"))
        .unwrap_or("(unnamed)");
    match metadata.and_then(|m| text_at(m, "namespace")) {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn invalid(origin: String, path: &str, message: String) -> Document {
    Document::Vm(Definition {
        origin,
        outcome: Err(vec![Problem {
            path: path.to_owned(),
            message,
        }]),
    })
}

fn classify(value: &Value, origin: &str, context: &Context, out: &mut Vec<Document>) {
    if value.is_null() {
        return;
    }
    if !value.is_mapping() {
        out.push(invalid(
            origin.to_owned(),
            "",
            "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
        ));
        return;
    }
    let api_version = text_at(value, "apiVersion").unwrap_or_default();
    let Some(kind) = text_at(value, "kind") else {
        out.push(invalid(
            origin.to_owned(),
            "kind",
            "required: every Kubernetes object names its kind".into(),
        ));
        return;
    };
    let described = describe(value, kind);
    if VM_KINDS.contains(&kind) {
        if !API_VERSIONS.contains(&api_version) {
            let message = format!(
                "{} is not supported by vmpod (use kubevirt.io/v1)",
                doc::quote(api_version)
            );
            out.push(invalid(described, "apiVersion", message));
            return;
        }
        out.push(Document::Vm(Definition {
            origin: described,
            outcome: parse_vm_in(value, context),
        }));
    } else if api_version.starts_with("kubevirt.io/") {
        let message = format!(
            "{} is not a kind vmpod runs (VirtualMachine or VirtualMachineInstance)",
            doc::quote(kind)
        );
        out.push(invalid(described, "kind", message));
    } else if kind == "List" {
        for (index, item) in value
            .get("items")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
        {
            classify(item, &format!("{origin} items[{index}]"), context, out);
        }
    } else if kind == "ConfigMap" && api_version == "v1" {
        classify_config_map(value, &described, context, out);
    } else {
        out.push(Document::Skipped { origin: described });
    }
}

/// A ConfigMap may carry VM definitions in its data keys.
fn classify_config_map(value: &Value, described: &str, context: &Context, out: &mut Vec<Document>) {
    let before = out.len();
    let data = value
        .get("data")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten();
    for (key, text) in data {
        let (Some(key), Some(text)) = (key.as_str(), text.as_str()) else {
            continue;
        };
        let origin = format!("{described} data[{key:?}]");
        let looks_like_definition = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| key.ends_with(ext));
        match parse_documents_in(text.as_bytes(), context) {
            Ok(documents) => out.extend(
                documents
                    .into_iter()
                    .filter(|d| matches!(d, Document::Vm(_)))
                    .map(|document| match document {
                        Document::Vm(definition) => Document::Vm(Definition {
                            origin: format!("{origin}: {}", definition.origin),
                            outcome: definition.outcome,
                        }),
                        skipped => skipped,
                    }),
            ),
            Err(error) if looks_like_definition => {
                out.push(invalid(
                    origin,
                    "",
                    format!("not valid YAML or JSON: {error}"),
                ));
            }
            Err(_) => {}
        }
    }
    if out.len() == before {
        out.push(Document::Skipped {
            origin: described.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_sharing;
