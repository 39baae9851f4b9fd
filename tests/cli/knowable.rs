//! Lint clean ⇒ `run` refuses nothing for a reason knowable from the files.
//!
//! A table of specs and templates that a real run refuses; for each, `lint`
//! and `plan` refuse it too, with the same message, located in the file
//! that holds the mistake — and `run` changes nothing. The other half of
//! the invariant (every shipped spec lints clean *and* runs green on its
//! scenario) is `quickstart::every_shipped_scenario_passes_with_junit_output`
//! with `quickstart::every_shipped_example_has_a_scenario`.

use crate::attacks::untouched;
use crate::k8s::{CANARY_MANIFEST, ISTIO_SPEC, istio_world};
use crate::{stderr, stdout};

struct Case {
    name: &'static str,
    /// Replacements in the Istio spec fixture.
    spec: &'static [(&'static str, &'static str)],
    /// Replacements in the canary template.
    template: &'static [(&'static str, &'static str)],
    /// Appended to the template (more documents).
    extra: &'static str,
    /// The whole template instead, when not empty.
    whole: &'static str,
    /// In the message of lint, plan and run.
    message: &'static str,
    /// Where lint locates it: `file:line[:column]`.
    at: &'static str,
}

const HOLD: &str = "  - id: promote\n    type: shift-traffic\n    needs: [shift-50]";

/// An InferenceService whose new revision would take 100 % as it is applied.
const ISVC_AT_ONCE: &str = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: {{model.name}}\nspec:\n  predictor:\n    serviceAccountName: {{model.name}}\n    minReplicas: 2\n    model:\n      modelFormat: {name: sklearn}\n      storageUri: models:/{{model.name}}/{{model.version}}\n      resources: {requests: {cpu: \"1\", memory: 2Gi}, limits: {cpu: \"2\", memory: 4Gi}}\n";

const CASES: &[Case] = &[
    Case {
        name: "a KServe canary that does not start at 0 %",
        spec: &[
            (
                "serving: {platform: deployment, traffic: istio}",
                "serving: {platform: kserve, traffic: kserve}",
            ),
            (
                "with: {resources: [Deployment/fraud-canary]}",
                "with: {resources: [InferenceService/fraud]}",
            ),
        ],
        template: &[],
        extra: "",
        whole: ISVC_AT_ONCE,
        message: "set `canaryTrafficPercent: 0`",
        at: "canary.yaml.hbs:7:5",
    },
    Case {
        name: "LoadBalancer without auth-policy",
        spec: &[],
        template: &[],
        extra: "---\napiVersion: v1\nkind: Service\nmetadata: {name: fraud-public}\nspec:\n  type: LoadBalancer\n  selector: {app: fraud}\n",
        whole: "",
        message: "exposes the model outside the cluster",
        at: "canary.yaml.hbs:23:7",
    },
    Case {
        name: "Ingress without auth-policy",
        spec: &[],
        template: &[],
        extra: "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: fraud-public}\nspec:\n  rules: [{host: fraud.example.com}]\n",
        whole: "",
        message: "exposes the model outside the cluster",
        at: "canary.yaml.hbs:23:7",
    },
    Case {
        name: "one replica in production",
        spec: &[],
        template: &[("  replicas: 2", "  replicas: 1")],
        extra: "",
        whole: "",
        message: "1 replica(s), production needs at least 2",
        at: "canary.yaml.hbs:7:13",
    },
    Case {
        name: "mirror on a provider that cannot mirror",
        spec: &[
            (
                "serving: {platform: deployment, traffic: istio}",
                "serving: {platform: deployment, traffic: smi}",
            ),
            ("    with: {canary: 20}", "    with: {canary: 20, mirror: 10}"),
        ],
        template: &[],
        extra: "",
        whole: "",
        message: "cannot mirror",
        at: "spec.yaml:26",
    },
    Case {
        name: "a route applied with traffic on the canary",
        spec: &[],
        template: &[],
        extra: "---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: fraud}\nspec:\n  hosts: [fraud]\n  http:\n    - route:\n        - {destination: {host: fraud, subset: stable}, weight: 80}\n        - {destination: {host: fraud, subset: canary}, weight: 20}\n",
        whole: "",
        message: "routes 20 % to the canary as it is applied",
        at: "canary.yaml.hbs:26:3",
    },
    Case {
        name: "a production hold that judges nothing",
        spec: &[(
            HOLD,
            "  - {id: soak, type: hold, needs: [shift-50], with: {duration: 1m}}\n  - id: promote\n    type: shift-traffic\n    needs: [soak]",
        )],
        template: &[],
        extra: "",
        whole: "",
        message: "a production hold without `analysis` judges nothing",
        at: "spec.yaml:33:53",
    },
    Case {
        name: "a prometheus metric with nowhere to ask",
        spec: &[(
            HOLD,
            "  - {id: soak, type: hold, needs: [shift-50], with: {duration: 1m, analysis: {interval: 10s, metrics: [{name: p99, provider: prometheus, query: up, max: 1}]}}}\n  - id: promote\n    type: shift-traffic\n    needs: [soak]",
        )],
        template: &[],
        extra: "",
        whole: "",
        message: "prometheus metric `p99` needs `address`",
        at: "spec.yaml:33:104",
    },
    Case {
        name: "a smoke test without an endpoint",
        spec: &[(
            HOLD,
            "  - {id: smoke, type: verify-inference, needs: [shift-50], with: {protocol: v2}}\n  - id: promote\n    type: shift-traffic\n    needs: [smoke]",
        )],
        template: &[],
        extra: "",
        whole: "",
        message: "set `serving.endpoint`",
        at: "spec.yaml:33:66",
    },
    Case {
        name: "a template that hard-codes another version",
        spec: &[],
        template: &[(
            "image: models/{{model.name}}:{{model.version}}",
            "image: models/{{model.name}}:9",
        )],
        extra: "",
        whole: "",
        message: "is not version 8 of fraud",
        at: "canary.yaml.hbs:17:18",
    },
];

#[test]
fn what_run_refuses_lint_and_plan_refuse_first() {
    let w = istio_world("");
    for case in CASES {
        let mut spec = ISTIO_SPEC.to_owned();
        for (a, b) in case.spec {
            assert!(spec.contains(a), "{}: the spec fixture has `{a}`", case.name);
            spec = spec.replace(a, b);
        }
        let mut template = CANARY_MANIFEST.to_owned();
        for (a, b) in case.template {
            assert!(template.contains(a), "{}: the template has `{a}`", case.name);
            template = template.replace(a, b);
        }
        template.push_str(case.extra);
        if !case.whole.is_empty() {
            template = case.whole.to_owned();
        }
        w.write("spec.yaml", &spec);
        w.write("canary.yaml.hbs", &template);
        let lint = w.rollwright(&["lint", "spec.yaml"], &[]);
        let text = stdout(&lint) + &stderr(&lint);
        assert_eq!(lint.status.code(), Some(1), "{}: lint passed:\n{text}", case.name);
        assert!(text.contains(case.message), "{}: lint says\n{text}", case.name);
        assert!(
            text.contains(&format!("--> {}", case.at)),
            "{}: lint does not locate it at {}:\n{text}",
            case.name,
            case.at
        );
        let plan = w.rollwright(&["plan", "spec.yaml"], &[]);
        let text = stdout(&plan) + &stderr(&plan);
        assert_eq!(plan.status.code(), Some(1), "{}: plan passed:\n{text}", case.name);
        assert!(text.contains(case.message), "{}: plan says\n{text}", case.name);
        let run = w.rollwright(&["run", "spec.yaml"], &[]);
        let text = stdout(&run) + &stderr(&run);
        assert_eq!(
            run.status.code(),
            Some(1),
            "{}: run was not refused up front:\n{text}",
            case.name
        );
        assert!(text.contains(case.message), "{}: run says\n{text}", case.name);
        untouched(&w, case.name);
    }
    // And the fixture itself is clean everywhere: the table's refusals are
    // the cases', not the world's.
    w.write("spec.yaml", ISTIO_SPEC);
    w.write("canary.yaml.hbs", CANARY_MANIFEST);
    let lint = w.rollwright(&["lint", "spec.yaml"], &[]);
    assert_eq!(lint.status.code(), Some(0), "{}", stdout(&lint));
}
