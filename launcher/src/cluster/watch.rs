//! Following one VirtualMachine object: watches from a resourceVersion,
//! bookmarks, expired watches (410 Gone) answered with a fresh get, and
//! failures retried with a growing pause. For the status reporter.

use std::time::Duration;

use futures::TryStreamExt;
use http::{Method, Request};
use serde_json::{json, Value};

use super::{Asked, Cluster, Failure, VIRTUAL_MACHINES};

/// Follows one VirtualMachine object through watches.
#[derive(Clone)]
pub struct Watcher<'c> {
    pub cluster: &'c Cluster,
    pub namespace: String,
    pub name: String,
}

/// Versions of the VirtualMachine object as they change, from
/// `resource_version` on (a fresh get when it is empty or too old).
pub fn watch_stream(
    watcher: Watcher<'_>,
    resource_version: String,
) -> impl futures::Stream<Item = Value> + '_ {
    futures::stream::unfold(
        (watcher, resource_version, 0u32),
        |(watcher, mut version, mut failures)| async move {
            loop {
                if version.is_empty() {
                    match watcher.fresh_version().await {
                        Some((object, fresh)) => return Some((object, (watcher, fresh, 0))),
                        None => {
                            failures += 1;
                            tokio::time::sleep(backoff(failures)).await;
                            continue;
                        }
                    }
                }
                match watcher.watch_once(&version).await {
                    Ok((Some(object), next)) => return Some((object, (watcher, next, 0))),
                    Ok((None, next)) => version = next,
                    Err(WatchEnd::Gone) => version.clear(),
                    Err(WatchEnd::Failed(reason)) => {
                        failures += 1;
                        if failures == 1 || failures % 10 == 0 {
                            log::warn!("watching VirtualMachine {}: {reason}", watcher.name);
                        }
                        tokio::time::sleep(backoff(failures)).await;
                    }
                }
            }
        },
    )
}

impl Watcher<'_> {
    async fn fresh_version(&self) -> Option<(Value, String)> {
        let asked = Asked {
            verb: "get",
            resource: VIRTUAL_MACHINES,
            namespace: self.namespace.clone(),
            name: Some(self.name.clone()),
        };
        let path = VIRTUAL_MACHINES.path(&self.namespace, Some(&self.name), None);
        match self
            .cluster
            .send(&asked, Method::GET, &path, None, None)
            .await
        {
            Ok(object) => {
                let version = object["metadata"]["resourceVersion"].as_str()?.to_owned();
                Some((object, version))
            }
            Err(Failure::NotFound) => Some((json!({"spec": {"running": false}}), "0".into())),
            Err(Failure::Error(error)) => {
                log::warn!("{error}");
                None
            }
        }
    }

    /// Follows one watch request until it yields a changed object, ends, or fails.
    async fn watch_once(&self, version: &str) -> Result<(Option<Value>, String), WatchEnd> {
        let path = format!(
            "{}?watch=true&allowWatchBookmarks=true&timeoutSeconds=300&fieldSelector=metadata.name%3D{}&resourceVersion={}",
            VIRTUAL_MACHINES.path(&self.namespace, None, None),
            self.name,
            version
        );
        let request = Request::get(path)
            .body(Vec::new())
            .map_err(|e| WatchEnd::Failed(e.to_string()))?;
        let stream = match self
            .cluster
            .watch_client
            .request_events::<Value>(request)
            .await
        {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => return Err(WatchEnd::Gone),
            Err(error) => return Err(WatchEnd::Failed(super::describe(&error))),
        };
        let mut stream = Box::pin(stream);
        let mut version = version.to_owned();
        loop {
            match stream.try_next().await {
                Ok(Some(
                    kube::core::WatchEvent::Added(object)
                    | kube::core::WatchEvent::Modified(object),
                )) => {
                    if let Some(next) = object["metadata"]["resourceVersion"].as_str() {
                        version = next.to_owned();
                    }
                    return Ok((Some(object), version));
                }
                Ok(Some(kube::core::WatchEvent::Deleted(_))) => {
                    log::info!("VirtualMachine {} was deleted", self.name);
                    return Ok((Some(json!({"spec": {"running": false}})), version));
                }
                Ok(Some(kube::core::WatchEvent::Bookmark(bookmark))) => {
                    version = bookmark.metadata.resource_version;
                }
                Ok(Some(kube::core::WatchEvent::Error(status))) if status.code == 410 => {
                    return Err(WatchEnd::Gone)
                }
                Ok(Some(kube::core::WatchEvent::Error(status))) => {
                    return Err(WatchEnd::Failed(format!(
                        "{} {}",
                        status.code, status.message
                    )))
                }
                Ok(None) => return Ok((None, version)),
                Err(error) => return Err(WatchEnd::Failed(super::describe(&error))),
            }
        }
    }
}

enum WatchEnd {
    Gone,
    Failed(String),
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64 << failures.min(6)).min(Duration::from_secs(30))
}
