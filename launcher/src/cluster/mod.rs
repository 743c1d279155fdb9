//! The Kubernetes API, as vmpod needs it: get an object (a VirtualMachine,
//! a ConfigMap, an instancetype, the pod itself), patch a VM's status,
//! record Events, watch a VM. Credentials as kubectl finds them
//! (`KUBECONFIG`, `~/.kube/config`) or the pod's service account.
//!
//! Owns a single-threaded async runtime; callers block on it (the main
//! thread before boot) or hand it to the status thread ([`status`]).
//! Errors name what was asked, where, and what to change.

pub mod status;
mod watch;

use std::time::Duration;

use http::{Method, Request};
use serde_json::Value;

/// One kind of object vmpod asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

const fn kubevirt(plural: &'static str, kind: &'static str) -> Resource {
    Resource {
        group: "kubevirt.io",
        version: "v1",
        plural,
        kind,
        namespaced: true,
    }
}

pub const VIRTUAL_MACHINES: Resource = kubevirt("virtualmachines", "VirtualMachine");
pub const VIRTUAL_MACHINE_INSTANCES: Resource =
    kubevirt("virtualmachineinstances", "VirtualMachineInstance");
pub const CONFIG_MAPS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "configmaps",
    kind: "ConfigMap",
    namespaced: true,
};
pub const PODS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    namespaced: true,
};
pub const EVENTS: Resource = Resource {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
};
pub const CORE_EVENTS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
};

/// An instancetype or preference kind in `instancetype.kubevirt.io/v1beta1`.
pub fn instancetype_resource(plural: &'static str, namespaced: bool) -> Resource {
    Resource {
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        plural,
        kind: "",
        namespaced,
    }
}

impl Resource {
    /// `virtualmachines.kubevirt.io`, `configmaps`: as RBAC rules name it.
    pub fn rbac_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn path(&self, namespace: &str, name: Option<&str>, subresource: Option<&str>) -> String {
        let mut path = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if self.namespaced {
            path.push_str(&format!("/namespaces/{namespace}"));
        }
        path.push('/');
        path.push_str(self.plural);
        if let Some(name) = name {
            path.push('/');
            path.push_str(name);
        }
        if let Some(subresource) = subresource {
            path.push('/');
            path.push_str(subresource);
        }
        path
    }
}

/// What was asked, for messages: `get virtualmachines.kubevirt.io "demo" in namespace default`.
#[derive(Debug, Clone)]
pub struct Asked {
    pub verb: &'static str,
    pub resource: Resource,
    pub namespace: String,
    pub name: Option<String>,
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource.rbac_name())?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if self.resource.namespaced {
            write!(f, " in namespace {}", self.namespace)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use the Kubernetes API configuration: {0}")]
    Config(String),
    #[error("{asked}: the API server at {server} refused vmpod's credentials (401 Unauthorized): check the kubeconfig's user or token, or the pod's service account token")]
    Unauthorized { asked: Box<Asked>, server: String },
    #[error("{asked}: forbidden (403): grant the pod's service account the `{}` verb on `{}` in namespace {} (manifests/rbac.yaml holds a Role with everything vmpod asks for)", asked.verb, asked.resource.rbac_name(), asked.namespace)]
    Forbidden { asked: Box<Asked>, message: String },
    #[error("{asked}: the cluster at {server} does not serve {}/{} {} (is KubeVirt's CRD installed? manifests/crd.yaml holds a minimal one for clusters without KubeVirt)", if asked.resource.group.is_empty() { "core" } else { asked.resource.group }, asked.resource.version, asked.resource.plural)]
    NotServed { asked: Box<Asked>, server: String },
    #[error("{asked}: the object changed since it was read (409 Conflict)")]
    Conflict { asked: Box<Asked> },
    #[error("{asked}: the watch's resourceVersion is too old (410 Gone)")]
    Gone { asked: Box<Asked> },
    #[error(
        "{asked}: the API server at {server} did not answer after {attempts} attempts: {reason}"
    )]
    Unreachable {
        asked: Box<Asked>,
        server: String,
        attempts: u32,
        reason: String,
    },
    #[error("{asked}: {code} {reason}: {message}")]
    Status {
        asked: Box<Asked>,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("{asked}: the API server's answer is not the JSON object expected: {reason}")]
    BadAnswer { asked: Box<Asked>, reason: String },
}

/// How long one request may take, and how often a failed one is tried.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// A connection to the cluster's API.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    /// The same credentials without a read timeout, for watches.
    watch_client: kube::Client,
    pub server: String,
    /// The kubeconfig context's namespace, or the service account's.
    pub default_namespace: String,
    /// Where the configuration came from, for the log.
    pub configured_by: String,
    timeout: Duration,
}

/// Where the environment configures a cluster, as kubectl would find it
/// (`KUBECONFIG`, `~/.kube/config`), or the pod's service account; `None`
/// when it configures none. Reads no file, starts nothing.
pub fn configured() -> Option<String> {
    let kubeconfig = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let home_config = std::env::var_os("HOME")
        .map(|home| std::path::Path::new(&home).join(".kube/config"))
        .filter(|path| path.exists());
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    match (&kubeconfig, &home_config, in_cluster) {
        (Some(path), _, _) => Some(format!("KUBECONFIG={}", path.to_string_lossy())),
        (None, Some(path), _) => Some(path.display().to_string()),
        (None, None, true) => Some("the pod's service account".to_owned()),
        (None, None, false) => None,
    }
}

impl Cluster {
    /// The cluster [`configured`] names; `None` when there is none.
    pub fn from_environment() -> Result<Option<Cluster>, ClusterError> {
        let Some(configured_by) = configured() else {
            return Ok(None);
        };
        let timeout = std::env::var("VMPOD_API_TIMEOUT")
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
            .filter(|seconds| *seconds > 0.0 && *seconds < 3600.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_TIMEOUT);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| ClusterError::Config(format!("cannot start its runtime: {error}")))?;
        let config = runtime
            .block_on(kube::Config::infer())
            .map_err(|error| ClusterError::Config(format!("{configured_by}: {error}")))?;
        let server = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let mut request_config = config.clone();
        request_config.connect_timeout = Some(timeout);
        request_config.read_timeout = Some(timeout);
        request_config.write_timeout = Some(timeout);
        let mut watch_config = config;
        watch_config.connect_timeout = Some(timeout);
        watch_config.read_timeout = None;
        let _entered = runtime.enter();
        let make = |config: kube::Config| {
            kube::Client::try_from(config)
                .map_err(|error| ClusterError::Config(format!("{configured_by}: {error}")))
        };
        let client = make(request_config)?;
        let watch_client = make(watch_config)?;
        drop(_entered);
        Ok(Some(Cluster {
            runtime,
            client,
            watch_client,
            server,
            default_namespace,
            configured_by,
            timeout,
        }))
    }

    /// Gets one object; `Ok(None)` when it does not exist.
    pub fn get(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ClusterError> {
        let asked = Asked {
            verb: "get",
            resource,
            namespace: namespace.to_owned(),
            name: Some(name.to_owned()),
        };
        let path = resource.path(namespace, Some(name), None);
        match self
            .runtime
            .block_on(self.send(&asked, Method::GET, &path, None, None))
        {
            Ok(value) => Ok(Some(value)),
            Err(Failure::NotFound) => Ok(None),
            Err(Failure::Error(error)) => Err(error),
        }
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// One request, tried again (with a growing pause) while the server is
    /// unreachable, slow, or answers 429/5xx.
    async fn send(
        &self,
        asked: &Asked,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Value, Failure> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = Request::builder().method(method.clone()).uri(path);
            if let Some(content_type) = content_type {
                request = request.header("Content-Type", content_type);
            }
            let request = request
                .body(body.clone().unwrap_or_default())
                .map_err(|error| self.bad_answer(asked, error.to_string()))?;
            let answer =
                tokio::time::timeout(self.timeout, self.client.request_text(request)).await;
            let transient = match answer {
                Ok(Ok(text)) => {
                    return serde_json::from_str(&text)
                        .map_err(|error| self.bad_answer(asked, error.to_string()))
                }
                Ok(Err(kube::Error::Api(status))) if status.code != 429 && status.code < 500 => {
                    return Err(self.classify(asked, &status));
                }
                Ok(Err(kube::Error::Api(status))) => {
                    format!("{} {}: {}", status.code, status.reason, status.message)
                }
                Ok(Err(error)) => describe(&error),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            if attempt >= ATTEMPTS {
                return Err(Failure::Error(ClusterError::Unreachable {
                    asked: Box::new(asked.clone()),
                    server: self.server.clone(),
                    attempts: attempt,
                    reason: transient,
                }));
            }
            log::warn!("{asked}: {transient}; trying again in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    fn bad_answer(&self, asked: &Asked, reason: String) -> Failure {
        Failure::Error(ClusterError::BadAnswer {
            asked: Box::new(asked.clone()),
            reason,
        })
    }

    fn classify(&self, asked: &Asked, status: &kube::core::Status) -> Failure {
        if status.code == 404 && names_the_object(status, asked) {
            return Failure::NotFound;
        }
        let asked = Box::new(asked.clone());
        let error = match status.code {
            401 => ClusterError::Unauthorized {
                asked,
                server: self.server.clone(),
            },
            403 => ClusterError::Forbidden {
                asked,
                message: status.message.clone(),
            },
            404 => ClusterError::NotServed {
                asked,
                server: self.server.clone(),
            },
            409 => ClusterError::Conflict { asked },
            410 => ClusterError::Gone { asked },
            code => ClusterError::Status {
                asked,
                code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
        };
        Failure::Error(error)
    }
}

/// Fetches a definition from an https URL (no credentials; the system's
/// CA certificates, or `SSL_CERT_FILE`), with the API's timeouts and
/// retries. Only `https://`: a definition may carry secrets.
pub fn fetch_url(url: &str) -> Result<String, ClusterError> {
    let asked = Asked {
        verb: "fetch",
        resource: Resource {
            group: "",
            version: "",
            plural: "definition",
            kind: "",
            namespaced: false,
        },
        namespace: String::new(),
        name: Some(url.to_owned()),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|error| ClusterError::Config(format!("{url:?} is not a URL: {error}")))?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(ClusterError::Config(format!(
            "{url:?}: the definition's URL must be https://HOST/PATH"
        )));
    }
    let base: http::Uri = format!("https://{}", uri.authority().map_or("", |a| a.as_str()))
        .parse()
        .map_err(|error| ClusterError::Config(format!("{url:?}: {error}")))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClusterError::Config(format!("cannot start its runtime: {error}")))?;
    let mut config = kube::Config::new(base);
    config.read_timeout = Some(DEFAULT_TIMEOUT);
    let client = {
        let _entered = runtime.enter();
        kube::Client::try_from(config)
            .map_err(|error| ClusterError::Config(format!("{url}: {error}")))?
    };
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let request = Request::get(path.as_str())
            .body(kube::client::Body::empty())
            .map_err(|error| ClusterError::Config(format!("{url}: {error}")))?;
        let answer = runtime.block_on(async {
            tokio::time::timeout(DEFAULT_TIMEOUT, async {
                let response = client.send(request).await?;
                let code = response.status();
                let body = response.into_body().collect_bytes().await?;
                Ok::<_, kube::Error>((code, body))
            })
            .await
        });
        let reason = match answer {
            Ok(Ok((code, body))) if code.is_success() => {
                return String::from_utf8(body.to_vec()).map_err(|_| ClusterError::BadAnswer {
                    asked: Box::new(asked),
                    reason: "the definition is not UTF-8 text".into(),
                })
            }
            Ok(Ok((code, _))) if code.as_u16() < 500 && code.as_u16() != 429 => {
                return Err(ClusterError::Status {
                    asked: Box::new(asked),
                    code: code.as_u16(),
                    reason: code.canonical_reason().unwrap_or_default().to_owned(),
                    message: "the server has no definition there".into(),
                })
            }
            Ok(Ok((code, _))) => format!("HTTP {code}"),
            Ok(Err(error)) => describe(&error),
            Err(_) => format!("no answer within {DEFAULT_TIMEOUT:?}"),
        };
        if attempt == ATTEMPTS {
            return Err(ClusterError::Unreachable {
                asked: Box::new(asked),
                server: base_of(url),
                attempts: attempt,
                reason,
            });
        }
        log::warn!("{asked}: {reason}; trying again in {backoff:?}");
        runtime.block_on(tokio::time::sleep(backoff));
        backoff *= 2;
    }
    unreachable!("the last attempt returns")
}

fn base_of(url: &str) -> String {
    url.split('/').take(3).collect::<Vec<_>>().join("/")
}

/// A 404 about the named object (its type exists), as opposed to one about
/// a path the server does not serve at all.
fn names_the_object(status: &kube::core::Status, asked: &Asked) -> bool {
    let named = status
        .details
        .as_ref()
        .is_some_and(|details| !details.name.is_empty());
    named
        || asked
            .name
            .as_ref()
            .is_some_and(|name| status.message.contains(&format!("\"{name}\" not found")))
}

/// The innermost cause of a client error: "connection refused", not a
/// chain of wrappers.
fn describe(error: &kube::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    text
}

enum Failure {
    NotFound,
    Error(ClusterError),
}
