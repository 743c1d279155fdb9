//! Which VM am I, and in which namespace: from what the pod can see of
//! itself. Pure over [`Facts`], which [`Facts::gather`] reads from the
//! environment and the downward API's files.

use std::collections::BTreeMap;
use std::path::Path;

/// The label on the pod that names its VM.
pub const VM_LABEL: &str = "vmpod.io/vm";
/// Where a downwardAPI volume puts the pod's labels by convention.
pub const PODINFO_LABELS: &str = "/etc/podinfo/labels";
/// Labels a pod template can pass in its environment (env
/// `valueFrom.fieldRef.fieldPath: metadata.labels['…']`) where no
/// downwardAPI volume gives them all, as under `podman kube play`: the
/// ones that say a controller runs several pods of this VM.
pub const LABEL_VARIABLES: &[(&str, &str)] = &[
    ("POD_TEMPLATE_HASH", "pod-template-hash"),
    ("STATEFULSET_POD_NAME", "statefulset.kubernetes.io/pod-name"),
    ("POD_INDEX", "apps.kubernetes.io/pod-index"),
    ("CONTROLLER_REVISION_HASH", "controller-revision-hash"),
    ("POD_TEMPLATE_GENERATION", "pod-template-generation"),
];
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// What the pod knows of itself.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// `VM_NAME`.
    pub vm_name: Option<String>,
    /// `POD_NAME` (downward API `metadata.name`).
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE` (downward API `metadata.namespace`).
    pub pod_namespace: Option<String>,
    /// The pod's labels: the downward API's labels file, or the pod object.
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Where the labels came from, for the log.
    pub labels_from: String,
    pub service_account_namespace: Option<String>,
    pub hostname: Option<String>,
}

impl Facts {
    pub fn gather() -> Facts {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let labels_file = env("VMPOD_PODINFO_LABELS").unwrap_or_else(|| PODINFO_LABELS.into());
        let (pod_labels, labels_from) = match std::fs::read_to_string(&labels_file) {
            Ok(text) => (Some(parse_labels_file(&text)), labels_file),
            Err(_) => labels_from_variables(env),
        };
        Facts {
            vm_name: env("VM_NAME"),
            pod_name: env("POD_NAME"),
            pod_namespace: env("POD_NAMESPACE"),
            pod_labels,
            labels_from,
            service_account_namespace: read_trimmed(Path::new(SERVICE_ACCOUNT_NAMESPACE)),
            hostname: read_trimmed(Path::new("/proc/sys/kernel/hostname")),
        }
    }

    /// The pod's name: `POD_NAME`, else the hostname (which Kubernetes
    /// sets to the pod's name).
    pub fn pod(&self) -> Option<&str> {
        self.pod_name.as_deref().or(self.hostname.as_deref())
    }
}

/// The labels of [`LABEL_VARIABLES`] that are set (and not empty, which is
/// what Kubernetes gives for a label the pod lacks), and where they came from.
fn labels_from_variables(
    env: impl Fn(&str) -> Option<String>,
) -> (Option<BTreeMap<String, String>>, String) {
    let mut names = Vec::new();
    let mut labels = BTreeMap::new();
    for (variable, label) in LABEL_VARIABLES {
        if let Some(value) = env(variable) {
            names.push(*variable);
            labels.insert((*label).to_owned(), value);
        }
    }
    let from = format!("the environment ({})", names.join(", "));
    ((!labels.is_empty()).then_some(labels), from)
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The downward API's labels file: `key="value"` lines, values quoted as
/// Go's `%q` does.
pub fn parse_labels_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, quoted) = line.split_once('=')?;
            let inner = quoted.trim().strip_prefix('"')?.strip_suffix('"')?;
            let mut value = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(other) => value.push(other),
                        None => {}
                    }
                } else {
                    value.push(c);
                }
            }
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

/// A value and where it came from (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub value: String,
    pub from: String,
}

fn chosen(value: &str, from: impl Into<String>) -> Chosen {
    Chosen {
        value: value.to_owned(),
        from: from.into(),
    }
}

/// The VM's name: the command line, `VM_NAME`, the pod's `vmpod.io/vm`
/// label, then the hostname.
pub fn vm_name(explicit: Option<&str>, facts: &Facts) -> Option<Chosen> {
    if let Some(name) = explicit {
        return Some(chosen(name, "the command line"));
    }
    if let Some(name) = &facts.vm_name {
        return Some(chosen(name, "VM_NAME"));
    }
    if let Some(name) = facts.pod_labels.as_ref().and_then(|l| l.get(VM_LABEL)) {
        return Some(chosen(
            name,
            format!("the pod's label {VM_LABEL} ({})", facts.labels_from),
        ));
    }
    facts
        .hostname
        .as_deref()
        .map(|name| chosen(name, "the hostname"))
}

/// The namespace: `POD_NAMESPACE`, the service account's namespace, the
/// kubeconfig context's, else `default`.
pub fn namespace(facts: &Facts, kubeconfig_namespace: Option<&str>) -> Chosen {
    if let Some(namespace) = &facts.pod_namespace {
        return chosen(namespace, "POD_NAMESPACE");
    }
    if let Some(namespace) = &facts.service_account_namespace {
        return chosen(namespace, "the service account's namespace file");
    }
    if let Some(namespace) = kubeconfig_namespace {
        return chosen(namespace, "the kubeconfig context");
    }
    chosen("default", "the default")
}

/// Which controller runs the pod, from the labels Kubernetes puts on its
/// pods: `Some` when several pods may run the same definition.
pub fn replica_controller(labels: &BTreeMap<String, String>) -> Option<&'static str> {
    if labels.contains_key("statefulset.kubernetes.io/pod-name")
        || labels.contains_key("apps.kubernetes.io/pod-index")
    {
        Some("StatefulSet")
    } else if labels.contains_key("pod-template-hash") {
        Some("ReplicaSet")
    } else if labels.contains_key("pod-template-generation")
        && labels.contains_key("controller-revision-hash")
    {
        Some("DaemonSet")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            vm_name: Some("from-env".into()),
            pod_labels: Some(BTreeMap::from([(
                VM_LABEL.to_owned(),
                "from-label".to_owned(),
            )])),
            labels_from: PODINFO_LABELS.into(),
            hostname: Some("from-hostname".into()),
            pod_namespace: Some("pod-ns".into()),
            service_account_namespace: Some("sa-ns".into()),
            ..Facts::default()
        }
    }

    #[test]
    fn the_name_comes_from_the_first_source_that_has_one() {
        let mut facts = facts();
        assert_eq!(
            vm_name(Some("cli"), &facts).unwrap().from,
            "the command line"
        );
        assert_eq!(vm_name(None, &facts).unwrap().value, "from-env");
        facts.vm_name = None;
        let by_label = vm_name(None, &facts).unwrap();
        assert_eq!(by_label.value, "from-label");
        assert!(by_label.from.contains("vmpod.io/vm"));
        facts.pod_labels = Some(BTreeMap::new());
        assert_eq!(
            vm_name(None, &facts).unwrap(),
            chosen("from-hostname", "the hostname")
        );
        facts.hostname = None;
        assert_eq!(vm_name(None, &facts), None);
    }

    #[test]
    fn the_namespace_comes_from_the_first_source_that_has_one() {
        let mut facts = facts();
        assert_eq!(namespace(&facts, Some("ctx")).value, "pod-ns");
        facts.pod_namespace = None;
        assert_eq!(namespace(&facts, Some("ctx")).value, "sa-ns");
        facts.service_account_namespace = None;
        assert_eq!(
            namespace(&facts, Some("ctx")),
            chosen("ctx", "the kubeconfig context")
        );
        assert_eq!(namespace(&facts, None).value, "default");
    }

    #[test]
    fn downward_api_labels_file() {
        let labels = parse_labels_file(
            "app=\"web\"\nvmpod.io/vm=\"demo\"\nnote=\"a \\\"quoted\\\" word\"\npod-template-hash=\"7d9f8c6b5\"\n",
        );
        assert_eq!(labels["vmpod.io/vm"], "demo");
        assert_eq!(labels["note"], "a \"quoted\" word");
        assert_eq!(replica_controller(&labels), Some("ReplicaSet"));
    }

    #[test]
    fn labels_from_the_environment_where_no_labels_file_exists() {
        let env = |name: &str| match name {
            "STATEFULSET_POD_NAME" => Some("web-1".to_owned()),
            "CONTROLLER_REVISION_HASH" => Some("web-5d8".to_owned()),
            _ => None,
        };
        let (labels, from) = labels_from_variables(env);
        let labels = labels.unwrap();
        assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-1");
        assert_eq!(replica_controller(&labels), Some("StatefulSet"));
        assert_eq!(
            from,
            "the environment (STATEFULSET_POD_NAME, CONTROLLER_REVISION_HASH)"
        );
        assert_eq!(labels_from_variables(|_| None).0, None);
    }

    #[test]
    fn controllers_are_told_apart_by_their_pod_labels() {
        let labels = |pairs: &[&str]| {
            pairs
                .iter()
                .map(|k| (k.to_string(), "x".to_string()))
                .collect()
        };
        assert_eq!(
            replica_controller(&labels(&[
                "statefulset.kubernetes.io/pod-name",
                "controller-revision-hash"
            ])),
            Some("StatefulSet")
        );
        assert_eq!(
            replica_controller(&labels(&[
                "controller-revision-hash",
                "pod-template-generation"
            ])),
            Some("DaemonSet")
        );
        assert_eq!(replica_controller(&labels(&["app"])), None);
    }
}
