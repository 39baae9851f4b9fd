//! The sim must never be the bottleneck of a test: API requests per second
//! from kube-rs on loopback, model-server requests per second, and memory
//! with 1,000 simulated pods in one process.
//!
//! `cargo bench -p rollwright-sim --bench api`

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rollwright_sim::{Scenario, Sim, SimOptions};
use serde_json::json;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn client(sim: &Sim) -> Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig()).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// `tasks` concurrent loops of `op` for `secs`; requests per second.
async fn throughput<F, Fut>(tasks: usize, secs: u64, op: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    op().await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let rss_start = rss_mib();
        let scenario = Scenario::from_yaml("time-scale: 100\nstartup: 10s\ntraffic: {rate: 0}\n", "bench").unwrap();
        let sim = Sim::start_with(SimOptions {
            scenario,
            ..SimOptions::default()
        })
        .await
        .expect("sim");
        let c = client(&sim).await;
        let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).unwrap(),
        )
        .await
        .expect("create");

        for tasks in [1usize, 16, 64] {
            let api = cms.clone();
            let rps = throughput(tasks, 3, move || {
                let api = api.clone();
                async move {
                    api.get("a").await.expect("get");
                }
            })
            .await;
            println!("kube-rs GET configmap, {tasks:>2} concurrent: {rps:>8.0} req/s");
        }
        let api = cms.clone();
        let rps = throughput(16, 3, move || {
            let api = api.clone();
            async move {
                let patch = json!({"data": {"k": "w"}});
                api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("patch");
            }
        })
        .await;
        println!("kube-rs merge-PATCH configmap, 16 concurrent: {rps:>8.0} req/s");

        // 1,000 pods: 10 Deployments of 100 replicas.
        let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
        let t = Instant::now();
        for i in 0..10 {
            let d = json!({"metadata": {"name": format!("m{i}")},
                "spec": {"replicas": 100, "selector": {"matchLabels": {"app": format!("m{i}")}},
                         "template": {"metadata": {"labels": {"app": format!("m{i}"), "version": "1"}},
                                      "spec": {"containers": [{"name": "c", "image": "model:1",
                                               "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]}}}});
            deps.create(&PostParams::default(), &serde_json::from_value(d).unwrap())
                .await
                .expect("deployment");
        }
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        loop {
            let ready = deps
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
                .iter()
                .filter(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(100))
                .count();
            if ready == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = pods.list(&ListParams::default()).await.expect("pods").items.len();
        println!(
            "{n} pods Ready in {:.1} s; process RSS {:.1} MiB (was {:.1} MiB before the sim started)",
            t.elapsed().as_secs_f64(),
            rss_mib(),
            rss_start
        );
        let api = cms.clone();
        let rps = throughput(16, 3, move || {
            let api = api.clone();
            async move {
                api.get("a").await.expect("get");
            }
        })
        .await;
        println!("kube-rs GET configmap with 1,000 pods running, 16 concurrent: {rps:>8.0} req/s");
        let rps = throughput(4, 3, {
            let pods = pods.clone();
            move || {
                let pods = pods.clone();
                async move {
                    pods.list(&ListParams::default().labels("app=m3")).await.expect("list");
                }
            }
        })
        .await;
        println!("kube-rs LIST 100 of 1,000 pods by label, 4 concurrent: {rps:>8.0} req/s");

        // The model router.
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m0", "namespace": "default"}, "spec": {"selector": {"app": "m0"}}});
        let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.clone(), "default");
        svcs.create(&PostParams::default(), &serde_json::from_value(svc).unwrap())
            .await
            .expect("service");
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.set_scenario(
            &Scenario::from_yaml("traffic: {rate: 0}\nmodels: {m0: {versions: {\"1\": {latency: {p50: 0s}}}}}\n", "b").unwrap(),
        );
        let http = reqwest::Client::new();
        let url = format!("{}/v1/models/m0:predict", sim.models_url());
        let rps = throughput(16, 3, move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http
                    .post(&url)
                    .json(&json!({"instances": [[1.0]]}))
                    .send()
                    .await
                    .expect("predict");
                assert_eq!(r.status(), 200);
            }
        })
        .await;
        println!("model server v1 predict (zero model latency), 16 concurrent: {rps:>8.0} req/s");
        println!("final RSS {:.1} MiB", rss_mib());
    });
}
