//! How a run reaches its cluster — decided once, recorded in the run's
//! journal header (under its integrity chain), and the only thing the
//! steps use to make a client.
//!
//! Two ways, never mixed:
//! - a **real cluster**: the kubeconfig files (an explicit `--kubeconfig`,
//!   else each file of `$KUBECONFIG`, else `~/.kube/config`), merged as
//!   kubectl merges them, with the effective context — or the in-cluster
//!   service account. The API server URL that context points at is resolved
//!   here, so that the platform policy judges the cluster actually reached
//!   (not the context's name), and a resume refuses a kubeconfig that now
//!   points somewhere else.
//! - the **embedded cluster** (`--sim`): the sim's kubeconfig, model
//!   servers, model registry and time scale. These simulation inputs exist
//!   only here: no command-line flag sets them for a real cluster, and a
//!   run attached to a sim another process runs (`rollwright test`,
//!   `rollwright sim`) proves first that the API server *is* that sim (it
//!   answers `/sim/identity` with the identity the attach file names).

use std::path::{Path, PathBuf};

use kube::config::{Kubeconfig, KubeconfigError};
use rollwright_engine::fsread::ReadError;
use rollwright_engine::registry::BuildContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest kubeconfig read (they list many clusters, but not megabytes).
const MAX_KUBECONFIG: u64 = 16 * 1024 * 1024;

/// How a run reaches its target cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Reach {
    /// The kubeconfig files, merged in order (empty: in-cluster).
    #[serde(default)]
    pub kubeconfigs: Vec<PathBuf>,
    /// The context used.
    pub context: String,
    /// The API server that context points at, when it could be read.
    #[serde(default)]
    pub server: Option<String>,
    /// The in-cluster service account, not a kubeconfig.
    #[serde(default)]
    pub in_cluster: bool,
    /// Set only for the embedded cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimReach>,
}

/// The embedded cluster a simulated run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SimReach {
    /// The sim's identity (random per sim), proven by `/sim/identity`.
    pub identity: String,
    /// Where the attach file is (a sim run by another process), if any.
    #[serde(default)]
    pub attach: Option<PathBuf>,
    /// The sim's model servers: the inference endpoint of the run.
    pub endpoint: String,
    /// The scenario's model registry file.
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// How much faster than real time durations pass.
    pub time_scale: f64,
    /// The repository standing in for `target.gitops.repo`.
    #[serde(default)]
    pub gitops_repo: Option<PathBuf>,
}

/// What a sim publishes so that another process can attach a run to it
/// (`rollwright test` writes one per test; `rollwright sim` prints its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Attach {
    /// Always `rollwright.dev/sim-attach`.
    pub kind: String,
    /// The sim's kubeconfig (its context is the spec's, or `sim`).
    pub kubeconfig: PathBuf,
    /// The context to use.
    pub context: String,
    /// The sim's identity.
    pub identity: String,
    /// Model servers.
    pub endpoint: String,
    /// Model registry file.
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// Time scale.
    pub time_scale: f64,
    /// Scenario repositories, `(name, bare repository)`.
    #[serde(default)]
    pub repositories: Vec<(String, PathBuf)>,
}

/// The attach file's `kind`.
pub const ATTACH_KIND: &str = "rollwright.dev/sim-attach";

/// Why a run cannot reach (or reach again) its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// A kubeconfig file cannot be read.
    #[error("kubeconfig {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// A kubeconfig file is not one, or the files do not merge.
    #[error("kubeconfig {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// The run's context is gone from the kubeconfig.
    #[error("the kubeconfig no longer has context `{context}` (it has: {known})")]
    ContextGone {
        /// The run's context.
        context: String,
        /// The contexts there are.
        known: String,
    },
    /// The run's context points at another API server now.
    #[error(
        "context `{context}` now points at {now} but the run started on {then}: refusing to continue on another cluster"
    )]
    Moved {
        /// The run's context.
        context: String,
        /// Where it points now.
        now: String,
        /// Where the run started.
        then: String,
    },
    /// A file that is not a sim attach file.
    #[error("{}: {message}", path.display())]
    NotAttach {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The API server an attach file names is not that sim.
    #[error("{0}")]
    NotTheSim(String),
    /// No scenario repository stands in for the spec's GitOps repository.
    #[error(
        "the spec's GitOps repository `{url}` needs a scenario repository (`repositories: {{{base}: DIR}}`); the sim never pushes anywhere else"
    )]
    NoRepository {
        /// The spec's repository.
        url: String,
        /// The name a scenario repository would need.
        base: String,
    },
}

impl Reach {
    /// The reach of a build context (`Reach::default()` when the run has none).
    #[must_use]
    pub fn of(cx: &BuildContext) -> Reach {
        serde_json::from_value(cx.reach.clone()).unwrap_or_default()
    }

    /// How much faster than real time the run's durations pass: the sim's
    /// time scale; 1 on a real cluster (only the embedded cluster runs
    /// faster than real time).
    #[must_use]
    pub fn time_scale(&self) -> f64 {
        self.sim
            .as_ref()
            .map_or(1.0, |s| s.time_scale)
            .clamp(f64::MIN_POSITIVE, 1e6)
    }

    /// `d` in the run's time: divided by the time scale.
    #[must_use]
    pub fn scaled(&self, d: std::time::Duration) -> std::time::Duration {
        d.div_f64(self.time_scale())
    }

    /// As a value for the journal header and [`BuildContext::reach`].
    #[must_use]
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A real cluster: `explicit` kubeconfig, else `$KUBECONFIG`'s files,
    /// else `~/.kube/config`, else in-cluster; `context` is the effective
    /// context (the spec's, or `--context`).
    ///
    /// # Errors
    /// A kubeconfig that cannot be read, or no context of that name.
    pub fn real(explicit: Option<&Path>, context: &str) -> Result<Reach, ReachError> {
        let files: Vec<PathBuf> = match explicit {
            Some(p) => vec![absolute(p)],
            None => match std::env::var_os("KUBECONFIG") {
                Some(v) if !v.is_empty() => std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| absolute(&p))
                    .collect(),
                _ => std::env::var_os("HOME")
                    .map(|h| Path::new(&h).join(".kube/config"))
                    .filter(|p| p.exists())
                    .into_iter()
                    .collect(),
            },
        };
        if files.is_empty() {
            // No kubeconfig and not in a cluster: a run whose steps never
            // touch a cluster still runs; one that does fails when it tries.
            let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") else {
                return Ok(Reach {
                    context: context.to_owned(),
                    ..Reach::default()
                });
            };
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            return Ok(Reach {
                kubeconfigs: Vec::new(),
                context: "in-cluster".into(),
                server: Some(format!("https://{host}:{port}")),
                in_cluster: true,
                sim: None,
            });
        }
        let kc = load_kubeconfigs(&files)?;
        // A context the kubeconfig lacks reaches nothing: steps that need the
        // cluster fail naming it; nothing else can be reached through it.
        let server = server_of(&kc, context).unwrap_or(None);
        Ok(Reach {
            kubeconfigs: files,
            context: context.to_owned(),
            server,
            in_cluster: false,
            sim: None,
        })
    }

    /// Whether this reaches a cluster at all (a kubeconfig context with a
    /// server, in-cluster, or the embedded cluster).
    #[must_use]
    pub fn reaches_cluster(&self) -> bool {
        self.sim.is_some() || self.in_cluster || self.server.is_some()
    }

    /// Re-reads the kubeconfig files and checks the context still points at
    /// the API server the run started with (what `resume`, `abort` and
    /// `approve` check before touching anything).
    ///
    /// # Errors
    /// The files cannot be read, or the context moved to another server.
    pub fn still_reaches(&self) -> Result<(), ReachError> {
        if self.in_cluster || self.sim.is_some() || self.kubeconfigs.is_empty() {
            return Ok(());
        }
        let kc = load_kubeconfigs(&self.kubeconfigs)?;
        let now = server_of(&kc, &self.context).map_err(|known| ReachError::ContextGone {
            context: self.context.clone(),
            known,
        })?;
        if now != self.server {
            return Err(ReachError::Moved {
                context: self.context.clone(),
                now: now.unwrap_or_else(|| "no server".into()),
                then: self.server.clone().unwrap_or_else(|| "no server".into()),
            });
        }
        Ok(())
    }

    /// The merged kubeconfig (`None`: in-cluster).
    ///
    /// # Errors
    /// A file cannot be read or parsed.
    pub fn kubeconfig(&self) -> Result<Option<Kubeconfig>, ReachError> {
        if self.kubeconfigs.is_empty() {
            return Ok(None);
        }
        load_kubeconfigs(&self.kubeconfigs).map(Some)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Reads and merges kubeconfig files (bounded reads: a kubeconfig is input too).
fn load_kubeconfigs(files: &[PathBuf]) -> Result<Kubeconfig, ReachError> {
    files.iter().try_fold(Kubeconfig::default(), |merged, f| {
        let parse = |source| ReachError::Parse {
            path: f.clone(),
            source,
        };
        let text =
            rollwright_engine::fsread::read_string(f, MAX_KUBECONFIG).map_err(|source| ReachError::Read {
                path: f.clone(),
                source,
            })?;
        merged
            .merge(Kubeconfig::from_yaml(&text).map_err(parse)?)
            .map_err(parse)
    })
}

/// The server of `context` (`Err` lists the contexts there are).
fn server_of(kc: &Kubeconfig, context: &str) -> Result<Option<String>, String> {
    let Some(ctx) = kc.contexts.iter().find(|c| c.name == context) else {
        return Err(kc
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "));
    };
    let cluster = ctx
        .context
        .as_ref()
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    Ok(kc
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone()))
}

/// The common name, before the identity, of the certificate a simulated
/// kube-apiserver presents (`rollwright_sim::control_plane::SIM_CA_NAME`:
/// `rollwright test` checks the two agree end to end).
pub const SIM_CA_NAME: &str = "rollwright simulated control plane ";

impl Attach {
    /// Reads an attach file.
    ///
    /// # Errors
    /// Unreadable, or not an attach file.
    pub fn load(path: &Path) -> Result<Attach, ReachError> {
        let not_attach = |message: String| ReachError::NotAttach {
            path: path.to_path_buf(),
            message,
        };
        let bytes =
            rollwright_engine::fsread::read(path, 64 * 1024).map_err(|e| not_attach(e.to_string()))?;
        let a: Attach =
            serde_json::from_slice(&bytes).map_err(|e| not_attach(format!("not a sim attach file: {e}")))?;
        if a.kind != ATTACH_KIND {
            return Err(not_attach(format!("not a sim attach file (kind {})", a.kind)));
        }
        Ok(a)
    }

    /// Proves that the kubeconfig's API server is the sim the file names:
    /// it must be on the loopback interface and answer `/sim/identity` with
    /// the file's identity. A real API server cannot.
    ///
    /// # Errors
    /// Why it is not that sim.
    pub async fn verify(&self) -> Result<(), ReachError> {
        self.identify().await.map_err(ReachError::NotTheSim)
    }

    async fn identify(&self) -> Result<(), String> {
        let reach = Reach {
            kubeconfigs: vec![self.kubeconfig.clone()],
            context: self.context.clone(),
            server: None,
            in_cluster: false,
            sim: None,
        };
        let kc = reach
            .kubeconfig()
            .map_err(|e| e.to_string())?
            .ok_or("the attach file names no kubeconfig")?;
        let server = server_of(&kc, &self.context)
            .map_err(|_| format!("the sim's kubeconfig has no context `{}`", self.context))?
            .unwrap_or_default();
        let url =
            reqwest::Url::parse(&server).map_err(|e| format!("the sim's API server `{server}`: {e}"))?;
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "{server} is not on this machine: the embedded cluster listens on 127.0.0.1 only"
            ));
        }
        let options = kube::config::KubeConfigOptions {
            context: Some(self.context.clone()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kc.clone(), &options)
            .await
            .map_err(|e| format!("the sim's kubeconfig: {e}"))?;
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        let req = http::Request::get("/sim/identity")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let got: Value = match client.request(req).await {
            Ok(v) => v,
            // A kube-apiserver the sim started serves no /sim path: its
            // certificate is what names it.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return self.identify_by_certificate(&kc, &server, &client).await;
            }
            Err(e) => {
                return Err(format!(
                    "{server} is not a rollwright sim (GET /sim/identity: {e})"
                ));
            }
        };
        if got["identity"].as_str() != Some(self.identity.as_str()) {
            return Err(format!(
                "{server} is not the sim this attach file describes (its identity differs)"
            ));
        }
        Ok(())
    }

    /// A simulated kube-apiserver proves itself by TLS: the kubeconfig
    /// trusts exactly one certificate (no `insecure-skip-tls-verify`), that
    /// certificate is named [`SIM_CA_NAME`] + this file's identity, and the
    /// server answered a request verified against it. A real cluster's
    /// certificate is not so named, and a certificate so named cannot
    /// verify a real cluster's server.
    async fn identify_by_certificate(
        &self,
        kc: &Kubeconfig,
        server: &str,
        client: &kube::Client,
    ) -> Result<(), String> {
        let not_it = |why: &str| format!("{server} is not the sim this attach file describes ({why})");
        let cluster_name = kc
            .contexts
            .iter()
            .find(|c| c.name == self.context)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
            .unwrap_or_default();
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.as_ref())
            .ok_or_else(|| not_it("its kubeconfig names no cluster"))?;
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Err(not_it("its kubeconfig skips TLS verification"));
        }
        let pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data.trim())
                    .map_err(|_| not_it("its certificate-authority-data is not base64"))?
            }
            (None, Some(file)) => std::fs::read(file).map_err(|e| not_it(&format!("{file}: {e}")))?,
            (None, None) => return Err(not_it("its kubeconfig trusts no certificate of its own")),
        };
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(&pem).map_err(|_| not_it("its certificate is not PEM"))?;
        let cert = pem
            .parse_x509()
            .map_err(|_| not_it("its certificate cannot be read"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        if name.strip_prefix(SIM_CA_NAME) != Some(self.identity.as_str()) {
            return Err(not_it("its certificate is not that sim's"));
        }
        // The server holds that certificate's key (TLS verified against it alone).
        client
            .apiserver_version()
            .await
            .map_err(|e| not_it(&format!("it does not answer with that certificate: {e}")))?;
        Ok(())
    }

    /// The reach of a run attached to this sim.
    #[must_use]
    pub fn reach(&self, attach: Option<&Path>, gitops_repo: Option<PathBuf>) -> Reach {
        Reach {
            kubeconfigs: vec![self.kubeconfig.clone()],
            context: self.context.clone(),
            server: None,
            in_cluster: false,
            sim: Some(SimReach {
                identity: self.identity.clone(),
                attach: attach.map(absolute),
                endpoint: self.endpoint.clone(),
                registry: self.registry.clone(),
                time_scale: self.time_scale,
                gitops_repo,
            }),
        }
    }

    /// The scenario repository standing in for a spec's GitOps `url`: the
    /// only one, else the one named like the URL's last segment.
    ///
    /// # Errors
    /// None, or none that matches among several.
    pub fn repository_for(&self, url: &str) -> Result<PathBuf, ReachError> {
        if let [(_, only)] = self.repositories.as_slice() {
            return Ok(only.clone());
        }
        let base = url
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or(url)
            .trim_end_matches(".git");
        self.repositories
            .iter()
            .find(|(n, _)| n == base)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| ReachError::NoRepository {
                url: url.to_owned(),
                base: base.to_owned(),
            })
    }
}
