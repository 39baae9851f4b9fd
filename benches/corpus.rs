//! A deterministic generator of realistic rollout specs for the lint
//! benchmark: canary rollouts of 80–150 lines (gate, apply, readiness,
//! verification, a ramp of shift/hold pairs with analysis, handlers), of
//! which about 5 % carry one realistic mistake each.
//!
//! Shared by `benches/lint_corpus.rs` and the CLI tests (which check that
//! lint flags exactly the broken files).

#![allow(dead_code)] // each includer uses a different part

use std::fmt::Write as _;
use std::path::Path;

/// SplitMix64: tiny, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const MODELS: &[&str] = &[
    "fraud-detector",
    "churn-scorer",
    "ranker",
    "embedder",
    "ctr-model",
    "eta-predictor",
    "spam-filter",
    "demand-forecast",
    "price-optimizer",
    "search-reranker",
];
const TEAMS: &[&str] = &["risk", "growth", "search", "ads", "logistics", "trust"];
const MUTATIONS: usize = 8;

/// One generated spec: its text and whether a mistake was injected.
pub struct Generated {
    pub text: String,
    pub invalid: bool,
}

/// Generates spec number `i` of a corpus.
pub fn spec(seed: u64, i: u64, invalid_per_mille: u64) -> Generated {
    let mut r = Rng::new(seed ^ (i.wrapping_mul(0xA24B_AED4_963E_E407)));
    let model = *r.pick(MODELS);
    let team = *r.pick(TEAMS);
    let prod = r.below(4) != 0;
    let env = if prod { "production" } else { "staging" };
    let kserve = r.below(2) == 0;
    let version = 1 + r.below(40);
    let mut s = String::with_capacity(4096);
    let _ = writeln!(
        s,
        "# yaml-language-server: $schema=../../schemas/rollout.schema.json"
    );
    let _ = writeln!(s, "# Rollout of {model} v{version} for the {team} team ({env}).");
    let _ = writeln!(s, "apiVersion: rollwright.dev/v1alpha1\nkind: Rollout\nmetadata:");
    let _ = writeln!(
        s,
        "  name: {model}-{i}\n  description: Canary rollout of {model} version {version}."
    );
    let _ = writeln!(s, "  labels:\n    team: {team}\n    tier: \"{}\"", 1 + r.below(3));
    let _ = writeln!(
        s,
        "model:\n  registry: {}\n  name: {model}\n  version: \"{version}\"",
        if r.below(2) == 0 { "mlflow" } else { "file" }
    );
    let _ = writeln!(
        s,
        "target:\n  context: {}-{}\n  namespace: {team}\n  environment: {env}",
        if prod { "prod" } else { "staging" },
        r.pick(&["east", "west", "eu"])
    );
    let _ = writeln!(
        s,
        "serving:\n  platform: {}\n  endpoint: http://{model}.{team}.svc.cluster.local:8080\n  traffic: {}",
        if kserve { "kserve" } else { "deployment" },
        if kserve {
            "kserve"
        } else {
            *r.pick(&["istio", "gateway-api", "smi"])
        }
    );
    let _ = writeln!(
        s,
        "defaults:\n  timeout: 30m\n  retry:\n    attempts: {}\n    backoff: exponential\n    initial: 2s\n    max: 1m",
        2 + r.below(3)
    );
    s.push_str("steps:\n");
    let _ = writeln!(
        s,
        "  - id: gate\n    type: gate-check\n    with:\n      approvals: {}\n      roles: [ml-lead]\n      alias: production-approved\n      evals:\n        auc: {{min: 0.9{}}}\n        latency-p99-ms: {{max: {}}}",
        1 + r.below(2),
        r.below(9),
        50 + r.below(100)
    );
    let _ = writeln!(
        s,
        "  - id: deploy\n    type: apply\n    needs: [gate]\n    with:\n      template: ../manifests/{}.yaml.hbs\n      min-replicas: {}\n    compensate: {{type: rollback}}",
        if kserve {
            "kserve-isvc"
        } else {
            "deployment-canary"
        },
        2 + r.below(3)
    );
    let _ = writeln!(
        s,
        "  - id: ready\n    type: wait-ready\n    needs: [deploy]\n    with:\n      max-restarts: 1"
    );
    let _ = writeln!(
        s,
        "  - id: smoke\n    type: verify-inference\n    needs: [ready]\n    with:\n      protocol: v2\n      requests: {}\n      success-ratio: 0.95\n      request: {{inputs: [{{name: features, shape: [1, 4], datatype: FP32, data: [0.1, 0.2, 0.3, 0.4]}}]}}\n      expect:\n        status: 200\n        latency: 500ms\n        json: [{{path: \"$.outputs[0].data[0]\", exists: true}}]",
        5 + r.below(20)
    );
    // The ramp: sorted partial weights, then 100.
    let mut weights: Vec<u64> = [1u64, 5, 10, 20, 25, 50, 75]
        .iter()
        .copied()
        .filter(|_| r.below(2) == 0)
        .collect();
    if weights.is_empty() {
        weights.push(10);
    }
    weights.truncate(1 + r.below(3) as usize);
    weights.push(100);
    let mut prev = "smoke".to_owned();
    for w in &weights {
        let _ = writeln!(
            s,
            "  - id: canary-{w}\n    type: shift-traffic\n    needs: [{prev}]\n    with:\n      canary: {w}\n    compensate: {{type: rollback}}"
        );
        if *w == 100 {
            break;
        }
        let _ = writeln!(
            s,
            "  - id: hold-{w}\n    type: hold\n    needs: [canary-{w}]\n    with:\n      duration: {}m\n      analysis:\n        interval: 30s\n        failure-limit: 2\n        on-no-data: fail\n        metrics:\n          - name: error-rate\n            provider: probe\n            query: error-rate\n            max-increase-over-stable: 0.005\n            max: 0.05\n          - {{name: p99, provider: prometheus, address: \"http://prometheus.monitoring.svc:9090\", max: 0.3,\n             query: 'histogram_quantile(0.99, sum(rate(request_duration_seconds_bucket{{model=\"{model}\"}}[1m])) by (le))'}}",
            5 + r.below(15)
        );
        prev = format!("hold-{w}");
    }
    let _ = writeln!(
        s,
        "on-failure:\n  - id: page\n    type: notify\n    with:\n      webhook:\n        secretRef: {team}-oncall\n      message: {model} rollout rolled back"
    );
    let invalid = r.below(1000) < invalid_per_mille;
    if invalid {
        s = mutate(&s, r.below(MUTATIONS as u64) as usize);
    }
    Generated { text: s, invalid }
}

/// Injects one realistic mistake.
fn mutate(s: &str, which: usize) -> String {
    match which {
        0 => s.replacen("needs: [gate]", "needs: [gaet]", 1),
        1 => s.replacen("interval: 30s", "interval: 30 sec", 1),
        2 => s.replacen("      approvals:", "      aprovals:", 1),
        3 => s.replacen("  - id: ready\n", "  - id: deploy\n", 1),
        4 => s.replacen("      canary: 100\n", "      canary: 120\n", 1),
        5 => s.replacen(
            "        secretRef: ",
            "        token: xoxb-1234567890-abcdefghij-",
            1,
        ),
        6 => s.replacen("  - id: ready\n", "  - id: [ready\n", 1),
        _ => s.replacen(
            "    type: gate-check\n",
            "    type: gate-check\n    timeout: 10\n",
            1,
        ),
    }
}

/// Writes `n` specs into `dir`, in 100 subdirectories, with the manifest
/// templates they use; returns how many are invalid.
pub fn write(dir: &Path, n: u64, seed: u64) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir.join("manifests"))?;
    // A repository: templates are found (and confined) up to its root.
    std::fs::create_dir_all(dir.join(".git"))?;
    for name in ["kserve-isvc", "deployment-canary"] {
        std::fs::write(
            dir.join(format!("manifests/{name}.yaml.hbs")),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"{{model.name}}-{{model.version}}\"}\n",
        )?;
    }
    let mut invalid = 0;
    for i in 0..n {
        let sub = dir.join(format!("team-{:02}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&sub)?;
        }
        let g = spec(seed, i, 50);
        invalid += u64::from(g.invalid);
        std::fs::write(sub.join(format!("spec-{i:05}.yaml")), g.text)?;
    }
    Ok(invalid)
}

/// Spec `i` of a monorepo-shaped corpus: about 55 % on a shared strategy
/// (`uses:` with `params` and `customize`), the rest with their own steps;
/// every one renders one of the two shared manifest templates. `up` is the
/// path from the spec's directory to the corpus root.
pub fn monorepo_spec(seed: u64, i: u64, invalid_per_mille: u64, up: &str) -> Generated {
    let mut r = Rng::new(seed ^ (i.wrapping_mul(0x9FB2_1C65_1E98_DF25)));
    if r.below(100) >= 55 {
        // Own steps: the flat generator, templates from the platform directory.
        let g = spec(seed, i, invalid_per_mille);
        return Generated {
            // The platform's templates run 2 replicas.
            text: g
                .text
                .replace("../manifests/", &format!("{up}platform/manifests/"))
                .replace("min-replicas: 3", "min-replicas: 2")
                .replace("min-replicas: 4", "min-replicas: 2"),
            invalid: g.invalid,
        };
    }
    let model = *r.pick(MODELS);
    let team = *r.pick(TEAMS);
    let prod = r.below(4) != 0;
    let env = if prod { "production" } else { "staging" };
    let kserve = r.below(2) == 0;
    let version = 1 + r.below(40);
    let mut s = String::with_capacity(2048);
    let _ = writeln!(
        s,
        "# yaml-language-server: $schema={up}schemas/rollout.schema.json"
    );
    let _ = writeln!(
        s,
        "# {model} v{version} for the {team} team ({env}), on the platform's strategy."
    );
    let _ = writeln!(s, "apiVersion: rollwright.dev/v1alpha1\nkind: Rollout\nmetadata:");
    let _ = writeln!(s, "  name: {model}-{i}\n  labels: {{team: {team}}}");
    let (strategy, manifest) = if kserve {
        ("kserve-canary", "kserve-isvc")
    } else {
        ("canary", "deployment-canary")
    };
    let _ = writeln!(s, "uses: {up}platform/strategies/{strategy}.yaml");
    let mut weights: Vec<u64> = [5u64, 10, 20, 25, 50]
        .iter()
        .copied()
        .filter(|_| r.below(2) == 0)
        .collect();
    if weights.is_empty() {
        weights.push(20);
    }
    let _ = writeln!(
        s,
        "params:\n  manifest: {up}platform/manifests/{manifest}.yaml.hbs\n  weights: [{}]\n  hold: {}m\n  approvals: {}",
        weights.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        5 + r.below(25),
        1 + r.below(2)
    );
    if kserve {
        let _ = writeln!(s, "  resource: {model}");
    } else {
        let _ = writeln!(s, "  interval: {}s", 30 + 10 * r.below(4));
    }
    let _ = writeln!(
        s,
        "model:\n  registry: mlflow\n  name: {model}\n  version: \"{version}\"\ntarget:\n  context: {}-{}\n  namespace: {team}\n  environment: {env}",
        if prod { "prod" } else { "staging" },
        r.pick(&["east", "west", "eu"])
    );
    let _ = writeln!(
        s,
        "serving:\n  platform: {}\n  traffic: {}\n  endpoint: http://{model}.{team}.svc.cluster.local:8080",
        if kserve { "kserve" } else { "deployment" },
        if kserve {
            "kserve"
        } else {
            *r.pick(&["istio", "gateway-api", "smi"])
        }
    );
    let _ = writeln!(
        s,
        "customize:\n  with:\n    gate:\n      approvals: {}\n      roles: [ml-lead]\n      evals:\n        auc: {{min: 0.9{}}}\n        latency-p99-ms: {{max: {}}}",
        1 + r.below(2),
        r.below(9),
        50 + r.below(100)
    );
    if r.below(2) == 0 {
        let _ = writeln!(
            s,
            "    smoke:\n      requests: {}\n      success-ratio: 0.95\n      expect: {{status: 200, latency: 500ms}}",
            5 + r.below(20)
        );
    }
    if r.below(3) == 0 {
        let _ = writeln!(
            s,
            "  needs:\n    promote: [sign-off]\n  add:\n    - id: sign-off\n      type: approval\n      needs: [ramp]\n      with:\n        approvers: 1\n        from: [alice, bob]\n        expires: 4h\n        message: \"{model} {{{{model.version}}}} is at its last hold; approve to go to 100%.\""
        );
    }
    let _ = writeln!(
        s,
        "on-failure:\n  - id: page\n    type: notify\n    with:\n      webhook: {{secretRef: {team}-oncall}}\n      message: {model} rollout rolled back"
    );
    let invalid = r.below(1000) < invalid_per_mille;
    if invalid {
        s = match r.below(4) {
            0 => s.replacen("  hold: ", "  holdd: ", 1),
            1 => s.replacen("  approvals: ", "  approvals: two # ", 1),
            2 => s.replacen("    gate:\n", "    gaet:\n", 1),
            _ => s.replacen("  weights: [", "  weights: 5 # [", 1),
        };
    }
    Generated { text: s, invalid }
}

/// Writes a monorepo of `n` specs under `dir/teams/<team>/<group>/` with
/// the platform's strategies and templates (the shipped ones) under
/// `dir/platform/`; returns the invalid specs' paths.
pub fn write_monorepo(dir: &Path, n: u64, seed: u64) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir.join(".git"))?;
    std::fs::create_dir_all(dir.join("platform/strategies"))?;
    std::fs::create_dir_all(dir.join("platform/manifests"))?;
    for (name, text) in [
        ("canary", include_str!("../specs/strategies/canary.yaml")),
        (
            "kserve-canary",
            include_str!("../specs/strategies/kserve-canary.yaml"),
        ),
    ] {
        std::fs::write(dir.join(format!("platform/strategies/{name}.yaml")), text)?;
    }
    for (name, text) in [
        (
            "kserve-isvc",
            include_str!("../specs/manifests/kserve-isvc.yaml.hbs"),
        ),
        (
            "deployment-canary",
            include_str!("../specs/manifests/deployment-canary.yaml.hbs"),
        ),
    ] {
        std::fs::write(dir.join(format!("platform/manifests/{name}.yaml.hbs")), text)?;
    }
    let mut invalid = Vec::new();
    for i in 0..n {
        let team = TEAMS[(i % TEAMS.len() as u64) as usize];
        let sub = dir.join(format!("teams/{team}/group-{:02}", (i / 7) % 20));
        std::fs::create_dir_all(&sub)?;
        let g = monorepo_spec(seed, i, 50, "../../../");
        let path = sub.join(format!("spec-{i:05}.yaml"));
        if g.invalid {
            invalid.push(path.clone());
        }
        std::fs::write(path, g.text)?;
    }
    Ok(invalid)
}
