//! Watches: the history since a resourceVersion, then live changes (410 Expired when too old).

use super::*;

impl State {
    /// A watch: past changes after `resourceVersion` (or the current
    /// objects as `ADDED`), then live changes, one JSON event per line;
    /// `410 Gone` as an `ERROR` event when that history is gone.
    pub(super) fn watch(self: &Arc<Self>, t: Target, query: &ApiQuery) -> Response {
        let selector = query.label_selector.clone().unwrap_or_default();
        let since: Option<u64> = query
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok())
            .filter(|r| *r > 0);
        let timeout = query
            .timeout_seconds
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800);
        let matches = {
            let (group, plural, ns) = (t.kind.group, t.kind.plural, t.namespace.clone());
            let selector = selector.clone();
            move |c: &Change| {
                c.key.0 == group
                    && c.key.1 == plural
                    && ns.as_deref().is_none_or(|n| n == c.key.2)
                    && selected(&c.object, &selector)
            }
        };
        let event = |kind: &str, object: &Value| format!("{}\n", json!({"type": kind, "object": object}));
        let (initial, rx) = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            let rx = self.changes.subscribe();
            let mut lines = Vec::new();
            match since {
                None => {
                    for ((g, p, ns, _), o) in &store.objects {
                        let c = Change {
                            revision: 0,
                            kind: "ADDED",
                            key: (g.clone(), p.clone(), ns.clone(), String::new()),
                            object: o.clone(),
                        };
                        if matches(&c) {
                            lines.push(event("ADDED", o));
                        }
                    }
                }
                Some(rv) => {
                    let oldest = store.history.front().map_or(store.revision + 1, |c| c.revision);
                    if rv + 1 < oldest && rv < store.revision {
                        let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("too old resource version: {rv} ({})", oldest.saturating_sub(1)), "reason": "Expired", "code": 410});
                        return (
                            StatusCode::OK,
                            [("content-type", "application/json")],
                            event("ERROR", &gone),
                        )
                            .into_response();
                    }
                    for c in store.history.iter().filter(|c| c.revision > rv && matches(c)) {
                        lines.push(event(c.kind, &c.object));
                    }
                }
            }
            (lines, rx)
        };
        let live = futures_util::stream::unfold((rx, matches), move |(mut rx, matches)| async move {
            loop {
                match rx.recv().await {
                    Ok(c) if matches(&c) => {
                        let line = format!("{}\n", json!({"type": c.kind, "object": c.object}));
                        return Some((Ok::<_, std::convert::Infallible>(line), (rx, matches)));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let head = futures_util::stream::iter(initial.into_iter().map(Ok::<_, std::convert::Infallible>));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
        let stream = futures_util::StreamExt::take_until(
            futures_util::StreamExt::chain(head, live),
            tokio::time::sleep_until(deadline),
        );
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            axum::body::Body::from_stream(stream),
        )
            .into_response()
    }
}
