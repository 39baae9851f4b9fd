//! Secret references and redaction.
//!
//! Specs never hold secrets, only references: `{secretRef: NAME, key: KEY}`
//! (a Kubernetes Secret), `{env: VARIABLE}` or `{file: PATH}`. [`resolve`]
//! turns a reference into a [`Secret`] at the moment a step needs it, and
//! registers the value so that [`scrub`] removes it from every text that
//! leaves the process: log lines, journal records, reports.
//!
//! A secret rarely leaves in the form it was registered in: an HTTP client
//! normalises a URL (`HTTPS://Hooks.Example/./x` → `https://hooks.example/x`),
//! a server echoes a token without its `Bearer ` prefix, a header travels
//! base64-encoded (`Basic …`), a query value percent-encoded. So a value is
//! registered with every form it can take on the way out — prefix-stripped,
//! URL-normalised (and its path, which carries the secret of a webhook),
//! percent-encoded and decoded, base64 in its four spellings, the password
//! of a `Basic` pair — and [`scrub`] matches them ignoring ASCII case.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A value resolved elsewhere (a Kubernetes Secret): registered for
    /// redaction before anything else sees it.
    #[must_use]
    pub fn from_resolved(value: String) -> Self {
        register(&value);
        Secret(value)
    }

    /// The value, for the one place that must send it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

fn registry() -> &'static Mutex<Vec<String>> {
    static VALUES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    VALUES.get_or_init(Mutex::default)
}

/// The shortest form worth scrubbing: shorter ones would scrub innocent
/// text (and are weak secrets anyway).
const MIN_LEN: usize = 6;

/// Registers a value (in every form it can take, see the module docs) to be
/// scrubbed from every output from now on.
pub fn register(value: &str) {
    if value.trim().len() < 4 {
        return;
    }
    let forms = forms(value);
    if let Ok(mut v) = registry().lock() {
        for f in forms {
            let lower = f.to_ascii_lowercase();
            if lower.len() >= MIN_LEN.min(value.trim().len()) && !v.contains(&lower) {
                v.push(lower);
            }
        }
        // Longest first, so that a secret containing another is removed whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Every form `value` can take on the way out.
#[must_use]
pub fn forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: String| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    let trimmed = value.trim();
    let mut cores = vec![trimmed.to_owned()];
    // A scheme prefix: what follows it travels alone too.
    for prefix in ["bearer ", "basic ", "token ", "bot ", "apikey "] {
        if trimmed.len() > prefix.len() && trimmed[..prefix.len()].eq_ignore_ascii_case(prefix) {
            let rest = trimmed[prefix.len()..].trim().to_owned();
            if prefix == "basic "
                && let Ok(pair) = STANDARD.decode(rest.as_bytes())
                && let Ok(pair) = String::from_utf8(pair)
            {
                // `user:password`: the pair, and the password alone.
                if let Some((_, pass)) = pair.split_once(':') {
                    cores.push(pass.to_owned());
                }
                cores.push(pair);
            }
            cores.push(rest);
        }
    }
    // A URL: its normalised form, and the path and query that carry the secret.
    if let Ok(u) = url::Url::parse(trimmed)
        && u.has_host()
    {
        cores.push(u.as_str().trim_end_matches('/').to_owned());
        let tail = &u[url::Position::BeforePath..];
        if tail.len() > 1 {
            cores.push(tail.to_owned());
        }
        if let Some(p) = u.password() {
            cores.push(p.to_owned());
        }
        for (_, v) in u.query_pairs() {
            cores.push(v.into_owned());
        }
    }
    for c in cores {
        if c.len() < 4 {
            continue;
        }
        add(c.clone());
        let encoded: String = url::form_urlencoded::byte_serialize(c.as_bytes()).collect();
        add(encoded.clone());
        add(encoded.replace('+', "%20"));
        if let Ok(decoded) = percent_decode(&c) {
            add(decoded);
        }
        for b64 in [
            STANDARD.encode(c.as_bytes()),
            STANDARD_NO_PAD.encode(c.as_bytes()),
            URL_SAFE.encode(c.as_bytes()),
            URL_SAFE_NO_PAD.encode(c.as_bytes()),
        ] {
            add(b64);
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, ()> {
    if !s.contains('%') {
        return Err(());
    }
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or(())
}

/// Replaces every registered secret, in any of its forms and ignoring
/// ASCII case, in `text` by `[redacted]`.
#[must_use]
pub fn scrub(text: &str) -> String {
    let Ok(values) = registry().lock() else {
        return "[redacted: secret registry unavailable]".into();
    };
    if values.is_empty() {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    // ASCII lower-casing keeps byte offsets: find in the lowered copy,
    // replace in the original.
    let mut lower = out.to_ascii_lowercase();
    for v in values.iter() {
        if !lower.contains(v.as_str()) {
            continue;
        }
        let mut next = String::with_capacity(out.len());
        let mut last = 0;
        for (i, _) in lower.match_indices(v.as_str()) {
            if i < last {
                continue;
            }
            next.push_str(&out[last..i]);
            next.push_str("[redacted]");
            last = i + v.len();
        }
        next.push_str(&out[last..]);
        out = next;
        lower = out.to_ascii_lowercase();
    }
    out
}

/// Scrubs every string inside a JSON value.
pub fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            let clean = scrub(s);
            if clean != *s {
                *s = clean;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(scrub_value),
        Value::Object(m) => m.values_mut().for_each(scrub_value),
        _ => {}
    }
}

/// Why a secret reference cannot be resolved. Never holds the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `env: VAR` names a variable that is not set.
    #[error("environment variable `{0}` is not set")]
    EnvUnset(String),
    /// `file: PATH` cannot be read.
    #[error("cannot read secret file `{path}`: {source}")]
    File {
        /// The file, as resolved.
        path: std::path::PathBuf,
        /// Why.
        source: crate::fsread::ReadError,
    },
    /// `secretRef: NAME` outside a step that reads it from the cluster.
    #[error(
        "Kubernetes Secret `{0}` is read by the step that uses it, from the target cluster; here it cannot be: use `env` or `file`"
    )]
    InCluster(String),
    /// Not a reference at all.
    #[error("not a secret reference: expected `secretRef`, `env` or `file`")]
    NotAReference,
}

/// Resolves a reference. `base` is where relative `file` paths start.
///
/// # Errors
/// What is missing, never the value.
pub fn resolve(reference: &Value, base: &Path) -> Result<Secret, SecretError> {
    let get = |k: &str| reference.get(k).and_then(Value::as_str);
    let value = if let Some(var) = get("env") {
        std::env::var(var).map_err(|_| SecretError::EnvUnset(var.to_owned()))?
    } else if let Some(file) = get("file") {
        let path = base.join(file);
        match crate::fsread::read_string(&path, 64 * 1024) {
            Ok(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
            Err(source) => return Err(SecretError::File { path, source }),
        }
    } else if let Some(name) = get("secretRef") {
        return Err(SecretError::InCluster(name.to_owned()));
    } else {
        return Err(SecretError::NotAReference);
    };
    register(&value);
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A property: for random secrets and every transformation a client,
    /// a server or a header puts them through, no scrubbed text keeps them.
    #[test]
    fn no_form_of_a_secret_survives_scrubbing() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~+/=:";
        for round in 0..400 {
            let len = 8 + (next() % 32) as usize;
            let secret: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            let (registered, shown): (String, Vec<String>) = match round % 4 {
                // A token registered with its scheme, echoed without it, in any case.
                0 => (
                    format!("Bearer {secret}"),
                    vec![
                        secret.clone(),
                        secret.to_ascii_uppercase(),
                        format!("bearer {secret}"),
                    ],
                ),
                // A webhook URL, normalised by the client, its path alone, percent-encoded.
                1 => {
                    let path: String = secret.chars().filter(char::is_ascii_alphanumeric).collect();
                    let path = format!("{path}X9");
                    let raw = format!("https://hooks.example.com/services/{path}");
                    (
                        raw.clone(),
                        vec![
                            format!("HTTPS://Hooks.Example.COM/./services/{path}"),
                            format!("/services/{path}"),
                            url::form_urlencoded::byte_serialize(raw.as_bytes()).collect(),
                            raw,
                        ],
                    )
                }
                // A Basic header: the pair, the password, base64 either way.
                2 => {
                    let pass: String = secret.chars().filter(|c| *c != ':').collect();
                    let pass = format!("{pass}Q7");
                    let pair = format!("deploy:{pass}");
                    (
                        format!("Basic {}", STANDARD.encode(&pair)),
                        vec![pair.clone(), pass, STANDARD.encode(&pair)],
                    )
                }
                // A plain value, base64 and percent-encoded.
                _ => (
                    secret.clone(),
                    vec![
                        STANDARD.encode(&secret),
                        URL_SAFE_NO_PAD.encode(&secret),
                        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
                        secret.to_ascii_lowercase(),
                    ],
                ),
            };
            register(&registered);
            for form in shown {
                let text = format!("error: upstream said \"{form}\" (status 401)");
                let clean = scrub(&text);
                let lower = clean.to_ascii_lowercase();
                assert!(
                    !lower.contains(&form.to_ascii_lowercase()),
                    "round {round}: `{form}` (from `{registered}`) survived: {clean}"
                );
                assert!(
                    clean.starts_with("error: upstream said"),
                    "the rest of the text stays: {clean}"
                );
            }
        }
    }

    #[test]
    fn resolve_register_and_scrub() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "file-secret-value\n").unwrap();
        let s = resolve(&json!({"file": "tok"}), dir.path()).unwrap();
        assert_eq!(s.expose(), "file-secret-value");
        assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
        assert_eq!(
            scrub("GET https://x/?t=file-secret-value ok"),
            "GET https://x/?t=[redacted] ok"
        );
        let mut v = json!({"a": ["file-secret-value"]});
        scrub_value(&mut v);
        assert_eq!(v, json!({"a": ["[redacted]"]}));
        let e = resolve(&json!({"env": "ROLLWRIGHT_SURELY_UNSET_VAR"}), dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable `ROLLWRIGHT_SURELY_UNSET_VAR` is not set"
        );
        assert!(
            resolve(&json!({"secretRef": "hook"}), dir.path())
                .unwrap_err()
                .to_string()
                .contains("`env` or `file`")
        );
    }
}
