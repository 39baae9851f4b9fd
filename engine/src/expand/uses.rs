//! Stage 1: follow `uses` from the Rollout through its Strategies (a cycle
//! is an error that prints the chain).

use super::*;

/// Loads the chain of strategies. Returns false when it cannot continue.
pub(super) fn follow_uses(cx: &mut Ctx<'_>) -> bool {
    let mut seen: Vec<PathBuf> = vec![canonical(&cx.sources[0].path)];
    loop {
        let cur = cx.sources.len() - 1;
        let Some(uses) = cx.sources[cur]
            .doc
            .value
            .get("uses")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return true;
        };
        let path = resolve_relative(&cx.sources[cur].path, &uses);
        let canon = canonical(&path);
        if let Some(first) = seen.iter().position(|p| *p == canon) {
            let mut chain: Vec<String> = cx.sources[first..]
                .iter()
                .map(|s| s.display.to_string())
                .collect();
            chain.push(display_path(&path));
            let at = cx.at(cur, "/uses");
            cx.error(
                Code::UsesCycle,
                at,
                format!("`uses` cycle: {}", chain.join(" -> ")),
            )
            .help = Some("a strategy cannot use itself, directly or through others".into());
            return false;
        }
        if let Err(e) = crate::fsread::confine(&cx.root, &path) {
            let at = cx.at(cur, "/uses");
            cx.error(
                Code::UnknownStrategy,
                at,
                format!("strategy `{}` {e}", display_path(&path)),
            )
            .help =
                Some("strategies and templates must live in the spec's repository (or under --root)".into());
            return false;
        }
        let limits = cx.env.limits;
        let load = || {
            let bytes = crate::fsread::read(&path, limits.max_bytes as u64)
                .map_err(|e| StrategyFailure::Read(e.to_string()))?;
            yaml::load_bytes(&bytes, limits)
                .map(Arc::new)
                .map_err(StrategyFailure::Parse)
        };
        let loaded = match cx.env.cache {
            Some(cache) => cache.strategy(&canon, load),
            None => load(),
        };
        let doc = match loaded {
            Ok(d) => d,
            Err(StrategyFailure::Read(e)) => {
                let at = cx.at(cur, "/uses");
                cx.error(
                    Code::UnknownStrategy,
                    at,
                    format!("cannot read strategy `{}`: {e}", display_path(&path)),
                )
                .help = Some("`uses` is a path relative to the file that contains it".into());
                return false;
            }
            Err(StrategyFailure::Parse(diags)) => {
                let display: Arc<str> = display_path(&path).into();
                for mut d in diags {
                    d.file = Some(display.clone());
                    cx.errors.push(d);
                }
                return false;
            }
        };
        if doc.value.get("kind").and_then(Value::as_str) != Some("Strategy") {
            let at = cx.at(cur, "/uses");
            cx.error(
                Code::UnknownStrategy,
                at,
                format!("`{}` is not a Strategy (`kind: Strategy`)", display_path(&path)),
            );
            return false;
        }
        seen.push(canon.clone());
        cx.sources.push(Source {
            display: display_path(&path).into(),
            path,
            doc,
            canonical: Some(canon),
        });
    }
}

pub(super) fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
