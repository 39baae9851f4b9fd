//! The simulated world through kube-rs: controllers (InferenceService,
//! Seldon, Deployments), routing for every provider, model servers, metrics,
//! the traffic generator, pod and API faults, scenarios, CRDs.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rollwright_sim::{Scenario, Sim, SimOptions};
use serde_json::{Value, json};

async fn sim(scenario: &str) -> Sim {
    let scenario = Scenario::from_yaml(scenario, "test").expect("scenario");
    Sim::start_with(SimOptions {
        scenario,
        ..SimOptions::default()
    })
    .await
    .expect("sim starts")
}

async fn client(sim: &Sim) -> Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig()).expect("kubeconfig");
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    // kube-rs retries 429/503 itself (15 times, backoff up to minutes):
    // these tests want to see the faults.
    cfg.default_retry = false;
    Client::try_from(cfg).expect("client")
}

fn api_for(client: &Client, obj: &Value) -> (Api<DynamicObject>, String) {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), obj["apiVersion"].as_str().unwrap().to_owned()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, obj["kind"].as_str().unwrap());
    let ar = ApiResource::from_gvk(&gvk);
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let api = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    (api, name)
}

/// Server-side apply through kube-rs.
async fn apply(client: &Client, obj: Value) -> DynamicObject {
    let (api, name) = api_for(client, &obj);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.patch(
        &name,
        &PatchParams::apply("world-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

async fn get(client: &Client, api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
    let (api, _) = api_for(
        client,
        &json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": ns}}),
    );
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn split(sim: &Sim, model: &str) -> BTreeMap<String, (u32, bool)> {
    sim.routes()
        .into_iter()
        .filter(|r| r.model == model)
        .flat_map(|r| r.backends)
        .map(|b| (b.version, (b.weight, b.ready)))
        .collect()
}

/// Sends `n` v1 predictions; counts answers per (version, code).
async fn predict(sim: &Sim, model: &str, n: usize, pin: Option<&str>) -> BTreeMap<(String, u16), usize> {
    let http = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let mut req = http
            .post(format!("{}/v1/models/{model}:predict", sim.models_url()))
            .json(&json!({"instances": [[1.0, 2.0]]}));
        if let Some(v) = pin {
            req = req.header("x-sim-version", v);
        }
        let r = req.send().await.unwrap();
        let version = r
            .headers()
            .get("x-model-version")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        *out.entry((version, r.status().as_u16())).or_insert(0) += 1;
    }
    out
}

fn deployment(ns: &str, name: &str, app: &str, version: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": app, "version": version}},
                    "template": {"metadata": {"labels": {"app": app, "version": version}},
                                 "spec": {"containers": [{"name": "model", "image": image}]}}}})
}

fn service(ns: &str, name: &str, selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"selector": selector, "ports": [{"port": 8080}]}})
}

const FAST: &str = "time-scale: 20\nstartup: 2s\ntraffic: {rate: 0}\nseed: 7\nobjects:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: ml}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_service_canary_follows_canary_traffic_percent() {
    let sim = sim(FAST).await;
    let c = client(&sim).await;
    let isvc = |uri: &str, canary: Option<u64>| {
        let mut v = json!({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
               "metadata": {"name": "fraud", "namespace": "ml"},
               "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}}});
        if let Some(p) = canary {
            v["spec"]["predictor"]["canaryTrafficPercent"] = json!(p);
        }
        v
    };
    apply(&c, isvc("models:/fraud/7", None)).await;
    let ready = |c: Client| async move {
        let o = get(&c, "serving.kserve.io/v1beta1", "InferenceService", "ml", "fraud").await;
        o["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|x| x["type"] == "Ready" && x["status"] == "True"))
    };
    eventually("v7 ready", || ready(c.clone())).await;
    let o = get(&c, "serving.kserve.io/v1beta1", "InferenceService", "ml", "fraud").await;
    assert_eq!(o["status"]["url"], "http://fraud.ml.example.com");
    assert_eq!(
        o["status"]["components"]["predictor"]["latestRolledoutRevision"],
        "fraud-predictor-00001"
    );
    eventually("route to v7", || async {
        split(&sim, "fraud") == BTreeMap::from([("7".into(), (100, true))])
    })
    .await;

    // A canary at 20 %: the latest revision gets 20, the rolled-out one 80.
    apply(&c, isvc("models:/fraud/8", Some(20))).await;
    eventually("v8 canary ready at 20 %", || async {
        split(&sim, "fraud") == BTreeMap::from([("7".into(), (80, true)), ("8".into(), (20, true))])
    })
    .await;
    let o = get(&c, "serving.kserve.io/v1beta1", "InferenceService", "ml", "fraud").await;
    let traffic = &o["status"]["components"]["predictor"]["traffic"];
    assert_eq!(traffic[0]["revisionName"], "fraud-predictor-00002");
    assert_eq!(traffic[0]["percent"], 20);
    assert_eq!(traffic[0]["latestRevision"], true);
    assert_eq!(traffic[1]["percent"], 80);
    // Routing by weight, checked statistically (fixed seed): 20 % ± 5.
    let answers = predict(&sim, "fraud", 600, None).await;
    let v8 = answers.get(&("8".into(), 200)).copied().unwrap_or(0);
    let v7 = answers.get(&("7".into(), 200)).copied().unwrap_or(0);
    assert_eq!(v7 + v8, 600, "{answers:?}");
    assert!((90..=150).contains(&v8), "v8 answered {v8} of 600");
    // A canary's own endpoint answers only it.
    assert_eq!(
        predict(&sim, "fraud", 5, Some("8")).await,
        BTreeMap::from([(("8".into(), 200), 5)])
    );

    // canaryTrafficPercent 0 is a rollback: everything to the rolled-out revision.
    apply(&c, isvc("models:/fraud/8", Some(0))).await;
    eventually("rollback to v7", || async {
        split(&sim, "fraud") == BTreeMap::from([("7".into(), (100, true)), ("8".into(), (0, true))])
    })
    .await;
    // Promotion: no canaryTrafficPercent, the latest takes 100 % and the old revision goes.
    apply(&c, isvc("models:/fraud/8", None)).await;
    eventually("v8 promoted", || async {
        split(&sim, "fraud") == BTreeMap::from([("8".into(), (100, true))])
    })
    .await;
    let o = get(&c, "serving.kserve.io/v1beta1", "InferenceService", "ml", "fraud").await;
    assert_eq!(
        o["status"]["components"]["predictor"]["previousRolledoutRevision"],
        "fraud-predictor-00001"
    );
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(c.clone(), "ml");
    eventually("old revision scaled away", || async {
        let names: Vec<String> = deps
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .collect();
        names == ["fraud-predictor-00002-deployment"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_split_errors_phases_and_metrics() {
    let sim = sim(&format!(
        "{FAST}models:\n  fraud:\n    versions:\n      \"8\":\n        error-rate: 0\n        phases:\n          - {{at-weight: 50, error-rate: 100%}}\n"
    ))
    .await;
    let c = client(&sim).await;
    apply(&c, deployment("ml", "fraud-v7", "fraud", "7", "fraud:7")).await;
    apply(&c, deployment("ml", "fraud-v8", "fraud", "8", "fraud:8")).await;
    apply(&c, service("ml", "fraud", json!({"app": "fraud"}))).await;
    apply(
        &c,
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule", "metadata": {"name": "fraud", "namespace": "ml"},
               "spec": {"host": "fraud", "subsets": [{"name": "stable", "labels": {"version": "7"}}, {"name": "canary", "labels": {"version": "8"}}]}}),
    )
    .await;
    let vs = |stable: u32, canary: u32| {
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": {"name": "fraud", "namespace": "ml"},
               "spec": {"hosts": ["fraud"], "http": [{"route": [
                   {"destination": {"host": "fraud", "subset": "stable"}, "weight": stable},
                   {"destination": {"host": "fraud", "subset": "canary"}, "weight": canary}]}]}})
    };
    apply(&c, vs(90, 10)).await;
    eventually("istio split 90/10", || async {
        split(&sim, "fraud") == BTreeMap::from([("7".into(), (90, true)), ("8".into(), (10, true))])
    })
    .await;
    // Before 50 %, v8 is healthy; from 50 % on (sticky), it fails.
    assert_eq!(
        predict(&sim, "fraud", 10, Some("8")).await,
        BTreeMap::from([(("8".into(), 200), 10)])
    );
    apply(&c, vs(50, 50)).await;
    eventually("istio split 50/50", || async {
        split(&sim, "fraud").get("8") == Some(&(50, true))
    })
    .await;
    assert_eq!(
        predict(&sim, "fraud", 10, Some("8")).await,
        BTreeMap::from([(("8".into(), 500), 10)])
    );
    apply(&c, vs(100, 0)).await;
    eventually("istio split 100/0", || async {
        split(&sim, "fraud").get("8") == Some(&(0, true))
    })
    .await;
    assert_eq!(
        predict(&sim, "fraud", 5, Some("8")).await,
        BTreeMap::from([(("8".into(), 500), 5)])
    );
    assert_eq!(
        predict(&sim, "fraud", 20, None).await,
        BTreeMap::from([(("7".into(), 200), 20)])
    );

    let metrics = reqwest::get(format!("{}/metrics", sim.models_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"sim_model_requests_total{namespace="ml",model="fraud",version="8",code="500"} 15"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"sim_model_requests_total{namespace="ml",model="fraud",version="7",code="200"} 20"#)
    );
    assert!(metrics.contains(
        r#"sim_model_request_duration_seconds_count{namespace="ml",model="fraud",version="8"} 25"#
    ));
    assert!(metrics.contains(
        r#"sim_model_traffic_percent{namespace="ml",model="fraud",version="7",backend="fraud/stable"} 100"#
    ));
    assert!(metrics.contains("# TYPE sim_model_request_duration_seconds histogram"));

    // v2 protocol, pinned to a version by path.
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/fraud/versions/7/infer", sim.models_url()))
        .json(&json!({"id": "q1", "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-model-version"], "7");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model_version"], "7");
    assert_eq!(body["id"], "q1");
    assert_eq!(body["outputs"][0]["shape"], json!([3]));
    let ready = reqwest::get(format!("{}/v2/models/fraud/ready", sim.models_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let missing = reqwest::get(format!("{}/v2/models/nope/ready", sim.models_url()))
        .await
        .unwrap();
    assert_eq!(missing.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_ready_pods_answers_503_and_crash_loops_show() {
    let sim = sim(&format!(
        "{FAST}pods:\n  - {{version: \"8\", never-ready: true}}\n  - {{image: \"fraud:9\", crash-loop: true}}\n"
    ))
    .await;
    let c = client(&sim).await;
    apply(&c, deployment("ml", "fraud-v7", "fraud", "7", "fraud:7")).await;
    apply(&c, deployment("ml", "fraud-v8", "fraud", "8", "fraud:8")).await;
    apply(&c, deployment("ml", "fraud-v9", "fraud", "9", "fraud:9")).await;
    for v in ["7", "8", "9"] {
        apply(
            &c,
            service(
                "ml",
                &format!("fraud-v{v}"),
                json!({"app": "fraud", "version": v}),
            ),
        )
        .await;
    }
    apply(
        &c,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "fraud", "namespace": "ml"},
               "spec": {"rules": [{"backendRefs": [{"name": "fraud-v7", "port": 8080, "weight": 1}, {"name": "fraud-v8", "port": 8080, "weight": 1}]}]}}),
    )
    .await;
    eventually("httproute split", || async {
        let s = split(&sim, "fraud");
        s.get("7") == Some(&(50, true)) && s.get("8").is_some_and(|b| b.0 == 50)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // v8 never becomes Ready: traffic to it is 503, as a mesh answers.
    assert_eq!(split(&sim, "fraud")["8"], (50, false));
    let r = predict(&sim, "fraud", 5, Some("8")).await;
    assert_eq!(r, BTreeMap::from([(("8".into(), 503), 5)]));
    // v9 crash-loops: restarts grow, CrashLoopBackOff.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), "ml");
    eventually("a crash loop", || async {
        pods.list(&kube::api::ListParams::default().labels("version=9"))
            .await
            .unwrap()
            .items
            .iter()
            .any(|p| {
                let cs = &p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
                cs.restart_count >= 1
                    && cs
                        .state
                        .as_ref()
                        .unwrap()
                        .waiting
                        .as_ref()
                        .unwrap()
                        .reason
                        .as_deref()
                        == Some("CrashLoopBackOff")
            })
    })
    .await;
    // Faults change while running: v8 recovers.
    sim.set_scenario(&Scenario::from_yaml("traffic: {rate: 0}\n", "live").unwrap());
    eventually("v8 ready after the fault is lifted", || async {
        split(&sim, "fraud").get("8") == Some(&(50, true))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_ingress_and_seldon_route_too() {
    let sim = sim(FAST).await;
    let c = client(&sim).await;
    apply(&c, deployment("ml", "ranker-v1", "ranker", "1", "ranker:1")).await;
    apply(&c, deployment("ml", "ranker-v2", "ranker", "2", "ranker:2")).await;
    apply(
        &c,
        service("ml", "ranker-v1", json!({"app": "ranker", "version": "1"})),
    )
    .await;
    apply(
        &c,
        service("ml", "ranker-v2", json!({"app": "ranker", "version": "2"})),
    )
    .await;
    apply(
        &c,
        json!({"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit", "metadata": {"name": "ranker-split", "namespace": "ml"},
               "spec": {"service": "ranker", "backends": [{"service": "ranker-v1", "weight": 70}, {"service": "ranker-v2", "weight": 30}]}}),
    )
    .await;
    eventually("smi split", || async {
        split(&sim, "ranker") == BTreeMap::from([("1".into(), (70, true)), ("2".into(), (30, true))])
    })
    .await;

    let ingress = |name: &str, svc: &str, canary: Option<&str>| {
        let mut v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": "ml"},
               "spec": {"rules": [{"host": "scorer.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": svc, "port": {"number": 8080}}}}]}}]}});
        if let Some(w) = canary {
            v["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": w});
        }
        v
    };
    apply(&c, ingress("scorer", "ranker-v1", None)).await;
    apply(&c, ingress("scorer-canary", "ranker-v2", Some("25"))).await;
    eventually("nginx canary", || async {
        split(&sim, "scorer") == BTreeMap::from([("1".into(), (75, true)), ("2".into(), (25, true))])
    })
    .await;

    apply(
        &c,
        json!({"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment", "metadata": {"name": "iris", "namespace": "ml"},
               "spec": {"predictors": [
                   {"name": "main", "replicas": 1, "traffic": 75, "labels": {"version": "3"}, "graph": {"name": "clf"}},
                   {"name": "canary", "replicas": 1, "traffic": 25, "labels": {"version": "4"}, "graph": {"name": "clf"}}]}}),
    )
    .await;
    eventually("seldon available", || async {
        get(
            &c,
            "machinelearning.seldon.io/v1",
            "SeldonDeployment",
            "ml",
            "iris",
        )
        .await["status"]["state"]
            == "Available"
    })
    .await;
    assert_eq!(
        split(&sim, "iris"),
        BTreeMap::from([("3".into(), (75, true)), ("4".into(), (25, true))])
    );
    let o = get(
        &c,
        "machinelearning.seldon.io/v1",
        "SeldonDeployment",
        "ml",
        "iris",
    )
    .await;
    assert_eq!(
        o["status"]["deploymentStatus"]["iris-canary"]["availableReplicas"],
        1
    );
    // Deleting the owner removes what its controller made.
    let (api, _) = api_for(&c, &o);
    api.delete("iris", &Default::default()).await.unwrap();
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(c.clone(), "ml");
    eventually("seldon deployments collected", || async {
        deps.list(&kube::api::ListParams::default().labels("seldon-deployment-id=iris"))
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_hit_the_named_verb_and_resource_and_can_be_lifted() {
    let sim = sim(&format!(
        "{FAST}api:\n  - {{verb: patch, resource: configmaps, error-rate: 100%, code: 500}}\n  - {{verb: create, resource: secrets, error-rate: 100%, code: 429}}\n"
    ))
    .await;
    let c = client(&sim).await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "ml"}, "data": {"k": "v"}});
    let (api, _) = api_for(&c, &cm);
    let obj: DynamicObject = serde_json::from_value(cm.clone()).unwrap();
    let err = api
        .patch("a", &PatchParams::apply("t"), &Patch::Apply(&obj))
        .await
        .unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 500), "{err:?}");
    // Other verbs and resources are untouched.
    api.create(&Default::default(), &obj).await.unwrap();
    // Field errors are 422 with causes, as the API server reports them.
    let bad: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "namespace": "ml"}}),
    )
    .unwrap();
    let err = api.create(&Default::default(), &bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("metadata.name: Invalid value")),
        "{err:?}"
    );
    api.get("a").await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "ml");
    let err = secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 429), "{err:?}");
    // Lifted through the admin endpoint (as `kubectl replace --raw /sim/scenario -f -` does).
    let put = axum::http::Request::put("/sim/scenario")
        .header("content-type", "application/yaml")
        .body(b"api: []\ntraffic: {rate: 0}\n".to_vec())
        .unwrap();
    let now: Value = serde_json::from_str(&c.request_text(put).await.unwrap()).unwrap();
    assert_eq!(now["api"], Value::Null, "{now}");
    let bad = axum::http::Request::put("/sim/scenario")
        .body(b"api: [{code: 404, error-rate: 1}]\n".to_vec())
        .unwrap();
    let err = c.request_text(bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("code 404")),
        "{err:?}"
    );
    api.patch("a", &PatchParams::apply("t"), &Patch::Apply(&obj))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_served_and_the_generator_fills_metrics() {
    let sim = sim("time-scale: 20\nstartup: 2s\ntraffic: {rate: 200}\n").await;
    let c = client(&sim).await;
    apply(
        &c,
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "applications.argoproj.io"},
               "spec": {"group": "argoproj.io", "scope": "Namespaced",
                        "names": {"kind": "Application", "plural": "applications", "singular": "application", "shortNames": ["app"]},
                        "versions": [{"name": "v1alpha1", "served": true, "storage": true}]}}),
    )
    .await;
    apply(
        &c,
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "fraud", "namespace": "default"},
               "spec": {"source": {"path": "deploy"}}}),
    )
    .await;
    let app = get(&c, "argoproj.io/v1alpha1", "Application", "default", "fraud").await;
    assert_eq!(app["spec"]["source"]["path"], "deploy");
    let discovery = kube::Discovery::new(c.clone()).run().await.unwrap();
    assert!(discovery.groups().any(|g| g.name() == "argoproj.io"));

    apply(&c, deployment("default", "echo", "echo", "1", "echo:1")).await;
    apply(&c, service("default", "echo", json!({"app": "echo"}))).await;
    eventually("generated traffic", || async {
        let m = reqwest::get(format!("{}/metrics", sim.models_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.lines().any(|l| {
            l.starts_with(
                r#"sim_model_requests_total{namespace="default",model="echo",version="1",code="200"}"#,
            ) && l
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 50)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_scale_speeds_up_startup_and_bad_objects_are_refused() {
    // 60 s of startup at 60× is one real second.
    let sim = sim("time-scale: 60x\nstartup: 60s\ntraffic: {rate: 0}\n").await;
    let c = client(&sim).await;
    let started = std::time::Instant::now();
    apply(&c, deployment("default", "slow", "slow", "1", "slow:1")).await;
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(c.clone(), "default");
    eventually("ready", || async {
        deps.get("slow")
            .await
            .unwrap()
            .status
            .and_then(|s| s.ready_replicas)
            == Some(2)
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "ready after {took:?}: startup not applied"
    );
    assert_eq!(sim.time_scale(), 60.0);

    let err = Sim::start_with(SimOptions {
        scenario: Scenario::from_yaml(
            "objects:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: x, namespace: nowhere}}\n",
            "s",
        )
        .unwrap(),
        ..SimOptions::default()
    })
    .await
    .err()
    .expect("a missing namespace is refused");
    assert!(err.to_string().contains("objects[0] (ConfigMap \"x\")"), "{err}");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scenarios_start() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/sim");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue; // gitops-repo/: a repository's seed, not a scenario
        }
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let sim = Sim::start_with(SimOptions {
            scenario,
            ..SimOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // fraud-gitops.yaml: the same world, synced from its repository by the sim's Argo CD.
        if path.ends_with("fraud-healthy.yaml")
            || path.ends_with("fraud-regression.yaml")
            || path.ends_with("fraud-gitops.yaml")
        {
            assert!(sim.settled(Duration::from_secs(20)).await, "{}", path.display());
            eventually("the seeded stable version serves", || async {
                split(&sim, "fraud-detector") == BTreeMap::from([("6".into(), (100, true))])
            })
            .await;
        }
        seen += 1;
    }
    assert!(seen >= 2);
}
