//! The committed schemas and the Rust types agree, and the generated
//! `schemas/rollout.schema.json` and `schemas/steps/*.schema.json` (the
//! kinds' schemas in `steps/schemas/`, accepting templated values) have not
//! drifted from their sources.
//! Run with `UPDATE_SCHEMAS=1` to rewrite the generated file.

use std::path::{Path, PathBuf};

use rollwright_engine::schema;
use rollwright_engine::spec::Spec;
use rollwright_engine::yaml::{Limits, load_str};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn generated_rollout_schema_is_committed() {
    let registry = rollwright_steps::registry();
    let mut generated = vec![(
        root().join("schemas/rollout.schema.json"),
        schema::to_pretty(&schema::rollout_schema(&registry).unwrap()),
    )];
    // The published step schemas: the kinds' own, accepting templated values.
    for kind in registry.iter() {
        let strict: Value = serde_json::from_str(kind.schema()).unwrap();
        generated.push((
            root().join(format!("schemas/steps/{}.schema.json", kind.name())),
            schema::to_pretty(&schema::accepting_templates(&strict)),
        ));
    }
    let mut stale = Vec::new();
    for (path, text) in &generated {
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        if std::fs::read_to_string(path).unwrap_or_default() != *text {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}: run `UPDATE_SCHEMAS=1 cargo test -p rollwright-steps --test schemas`"
    );
    // Nothing else in schemas/steps (a removed kind's file is removed).
    let published = std::fs::read_dir(root().join("schemas/steps")).unwrap().count();
    assert_eq!(
        published,
        registry.iter().count(),
        "one published schema per kind"
    );
}

#[test]
fn every_step_kind_has_its_schema_file() {
    let registry = rollwright_steps::registry();
    let dir = root().join("steps/schemas");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = registry.names().map(|n| format!("{n}.schema.json")).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "one schema file per registered step kind, and no other"
    );
    let mut stale = Vec::new();
    for kind in registry.iter() {
        let path = dir.join(format!("{}.schema.json", kind.name()));
        // The committed file is generated from the kind's typed config.
        let generated = kind
            .generated_schema()
            .unwrap_or_else(|| panic!("{} has no typed config to generate its schema from", kind.name()));
        let text = schema::to_pretty(&generated);
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            stale.push(path.display().to_string());
        }
    }
    for (name, generated) in rollwright_steps::target::generated_defs() {
        let path = root().join(format!("steps/envelope/{name}.schema.json"));
        let text = schema::to_pretty(&generated);
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with the kinds' config types: {stale:?}: run `UPDATE_SCHEMAS=1 cargo test -p rollwright-steps --test schemas`"
    );
    for kind in registry.iter() {
        let on_disk = std::fs::read_to_string(dir.join(format!("{}.schema.json", kind.name()))).unwrap();
        assert_eq!(
            on_disk,
            kind.schema(),
            "{} embeds its committed schema",
            kind.name()
        );
        let v: Value = serde_json::from_str(kind.schema()).unwrap();
        assert_eq!(v["title"], kind.name());
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The shipped Rollouts and Strategies (specs/sim holds sim scenarios and
/// specs/scenarios scenario tests, not specs).
fn shipped_specs() -> Vec<PathBuf> {
    let files: Vec<_> = yaml_files(&root().join("specs"))
        .into_iter()
        .filter(|f| {
            !f.starts_with(root().join("specs/sim")) && !f.starts_with(root().join("specs/scenarios"))
        })
        .collect();
    assert!(files.len() >= 8, "examples and strategies");
    files
}

#[test]
fn shipped_specs_lint_clean_and_their_expansions_deserialize() {
    let registry = rollwright_steps::registry();
    let linter = rollwright_engine::Linter::new(rollwright_steps::registry(), Limits::default()).unwrap();
    let files = shipped_specs();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let lint = linter.lint(&f, &bytes, false);
        assert!(
            lint.diagnostics.is_empty(),
            "{}: {:?}",
            f.display(),
            lint.diagnostics
        );
        let doc = load_str(std::str::from_utf8(&bytes).unwrap(), &Limits::default()).unwrap();
        let env = rollwright_engine::expand::Env {
            registry: &registry,
            limits: &Limits::default(),
            overrides: &[],
            render_manifests: false,
            root: None,
            cache: None,
        };
        let (exp, errors) = rollwright_engine::expand::expand(&f, doc, &env);
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
        let exp = exp.unwrap();
        let spec: Spec =
            serde_json::from_value(exp.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for s in &spec.steps {
            let kind = registry.get(&s.kind).unwrap();
            assert!(kind.check(&s.with).is_empty(), "{}: step {}", f.display(), s.id);
        }
    }
}

/// Structurally wrong documents: the schema and the types must both refuse
/// each of them.
#[test]
fn schema_invalid_documents_are_refused_by_both() {
    let registry = rollwright_steps::registry();
    let schemas = schema::Schemas::new(&registry).unwrap();
    let base = "apiVersion: rollwright.dev/v1alpha1\nkind: Rollout\nmetadata: {name: x}\n\
                model: {name: m, version: \"1\"}\ntarget: {context: c, namespace: n, environment: dev}\n";
    let cases = [
        "steps: [{id: a, type: hold, with: {duration: 1m}, bogus: 1}]",
        "steps: [{id: a}]",
        "steps: [{id: a, type: hold, continue-on-failure: maybe, with: {duration: 1m}}]",
        "steps: [{id: a, type: hold, needs: a, with: {duration: 1m}}]",
        "steps: []\ndefaults: {timeout: 5m, extra: 1}",
        "steps: []\non-failure: [{id: n, type: notify, needs: [a], with: {webhook: {env: X}}}]",
        "steps: [{id: a, type: hold, compensate: {type: rollback, id: x}, with: {duration: 1m}}]",
    ];
    for tail in cases {
        let text = format!("{base}{tail}\n");
        let doc = load_str(&text, &Limits::default()).unwrap();
        let (diags, _) = schemas.check(&doc);
        assert!(!diags.is_empty(), "schema accepts: {tail}");
        assert!(
            serde_json::from_value::<Spec>(doc.value.clone()).is_err(),
            "types accept: {tail}"
        );
    }
    // Kind-specific `with`: the kind's config type refuses what its schema refuses.
    let with_cases = [
        ("shift-traffic", r#"{"canary": "5"}"#),
        ("hold", r#"{"duration": 5}"#),
        (
            "hold",
            r#"{"duration": "1m", "analysis": {"metrics": [{"name": "x"}]}}"#,
        ),
        ("notify", r#"{"webhook": "https://example.invalid"}"#),
        ("apply", r#"{"template": "a", "replicas": 3}"#),
        ("gate-check", r#"{"evals": {"auc": {"minimum": 0.9}}}"#),
        ("rollback", r#"{"restore": "deploy"}"#),
        ("approval", r#"{"approvers": "two"}"#),
        ("verify-inference", r#"{"protocol": "grpc"}"#),
        ("wait-ready", r#"{"resources": "Deployment/x"}"#),
    ];
    for (kind, with) in with_cases {
        let text = format!("{base}steps: [{{id: a, type: {kind}, with: {with}}}]\n");
        let doc = load_str(&text, &Limits::default()).unwrap();
        let (diags, _) = schemas.check(&doc);
        assert!(!diags.is_empty(), "schema accepts {kind} {with}");
        let k = registry.get(kind).unwrap();
        let findings = k.check(&serde_json::from_str(with).unwrap());
        assert!(
            findings.iter().any(|f| f.code == rollwright_engine::Code::Schema),
            "type accepts {kind} {with}: {findings:?}"
        );
    }
}

/// What an editor shows: every shipped spec and strategy validates against
/// the published `schemas/rollout.schema.json` (with `common.schema.json`
/// and `steps/*.schema.json` beside it, as yaml-language-server resolves
/// them) — checked by the `jsonschema` crate alone on YAML read by
/// serde-saphyr, not by rollwright's loader or linter, so templated values
/// (`"{{params.approvals}}"` where a number goes) must be accepted by the
/// published schemas themselves.
#[test]
fn shipped_yaml_validates_against_the_published_schemas_in_an_independent_validator() {
    let dir = root().join("schemas");
    let base = "https://editor.invalid/schemas/";
    let read = |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let mut registry = jsonschema::Registry::new()
        .add(
            format!("{base}common.schema.json"),
            read(&dir.join("common.schema.json")),
        )
        .unwrap();
    for e in std::fs::read_dir(dir.join("steps")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        registry = registry.add(format!("{base}steps/{name}"), read(&p)).unwrap();
    }
    let prepared = registry.prepare().unwrap();
    let validator = jsonschema::options()
        .offline()
        .with_base_uri(format!("{base}rollout.schema.json"))
        .with_registry(&prepared)
        .build(&read(&dir.join("rollout.schema.json")))
        .unwrap();
    let files = shipped_specs();
    let mut problems = Vec::new();
    for f in &files {
        let value: Value = serde_saphyr::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for e in validator.iter_errors(&value) {
            problems.push(format!("{}: {}: {e}", f.display(), e.instance_path()));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Templates are accepted, not anything: a wrong value still shows.
    let base = "apiVersion: rollwright.dev/v1alpha1\nkind: Strategy\nmetadata: {name: s}\nsteps:\n";
    for (step, ok) in [
        (
            "  - {id: g, type: gate-check, with: {approvals: \"{{params.n}}\"}}",
            true,
        ),
        ("  - {id: g, type: gate-check, with: {approvals: two}}", false),
        (
            "  - {id: s, type: shift-traffic, with: {canary: \"{{item}}\"}}",
            true,
        ),
        ("  - {id: s, type: shift-traffic, with: {canary: \"5%\"}}", false),
        (
            "  - {id: h, type: hold, with: {duration: \"{{params.hold}}\"}}",
            true,
        ),
        ("  - {id: h, type: hold, with: {duration: ten minutes}}", false),
        (
            "  - {id: h, type: hold, with: {duration: 1m, bogus: \"{{x}}\"}}",
            false,
        ),
    ] {
        let value: Value = serde_saphyr::from_str(&format!("{base}{step}\n")).unwrap();
        assert_eq!(validator.is_valid(&value), ok, "{step}");
    }
}
