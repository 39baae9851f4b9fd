//! Semantic rules: what a JSON Schema cannot say.
//!
//! Each rule is a function over the typed [`Spec`] and the loaded
//! [`Document`] (for spans) that *appends* diagnostics; [`check`] runs all of
//! them and never stops early, so a spec with five problems shows five
//! findings. Graph rules (dominance, canary order) run only when the `needs`
//! graph is acyclic, because on a cycle "every path from the start" has no
//! meaning; the cycle itself is reported instead.
//!
//! Gate dominance uses petgraph's dominator tree over the DAG plus a virtual
//! start node: a production change is safe only if *every* path from the
//! start to it passes a gate-check, which is exactly "a gate dominates it".

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::OnceLock;

use petgraph::algo::dominators;
use petgraph::graph::{DiGraph, NodeIndex};
use regex::RegexSet;
use serde_json::Value;

use crate::diag::{Code, Diagnostic, Loc, Locate, did_you_mean};
use crate::duration;
use crate::policy::{Derived, Policy};
use crate::registry::{Registry, Role, StepKind};
use crate::retry::RetryPolicy;
use crate::spec::{Environment, Spec, Step};
use crate::yaml::{Document, push_pointer_segment};

/// Everything the rules need.
pub struct Context<'a> {
    /// The typed spec.
    pub spec: &'a Spec,
    /// Where each pointer of the (expanded) spec came from.
    pub locate: &'a dyn Locate,
    /// Known step kinds.
    pub registry: &'a Registry,
    /// Pointers at which the schema already reported a problem; rules skip
    /// what lies under them so one mistake is not reported twice.
    pub schema_errors: &'a [String],
    /// The platform policy, if one is in force.
    pub policy: Option<&'a Policy>,
    /// Where a run of the spec would deploy (context used, its API server),
    /// when known: the policy judges the cluster actually reached.
    pub reached: Option<&'a crate::policy::Reached>,
}

impl Context<'_> {
    /// The environment that counts: the policy's view of the target, else
    /// what the spec declares.
    fn environment(&self) -> Option<Derived> {
        match self.policy {
            Some(p) => p.derive(self.spec, self.reached),
            None => self.spec.target.as_ref().map(|t| Derived {
                environment: t.environment,
                reason: None,
            }),
        }
    }

    fn production(&self) -> bool {
        self.environment()
            .is_some_and(|d| d.environment == Environment::Production)
    }

    /// Whether going straight to 100 % needs a justification here.
    fn canary_by_default(&self) -> bool {
        let Some(d) = self.environment() else { return false };
        d.environment == Environment::Production
            || self
                .policy
                .and_then(|p| p.rules(d.environment))
                .is_some_and(|r| r.canary_by_default)
    }
}

impl Context<'_> {
    fn schema_bad(&self, pointer: &str) -> bool {
        self.schema_errors.iter().any(|p| {
            p == pointer || (p.starts_with(pointer) && p.as_bytes().get(pointer.len()) == Some(&b'/'))
        })
    }

    fn span(&self, pointer: &str) -> Loc {
        self.locate.locate(pointer)
    }
}

/// `line:col`, or `file:line:col` for another file.
fn where_(l: &Loc) -> String {
    match &l.file {
        Some(f) => format!("{f}:{}", l.span.start),
        None => l.span.start.to_string(),
    }
}

/// Runs every semantic rule.
#[must_use]
pub fn check(cx: &Context<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    check_policies(cx, &mut out);
    check_step_configs(cx, &mut out);
    let graph = check_ids_and_needs(cx, &mut out);
    check_step_refs(cx, &mut out);
    check_hold_timeouts(cx, &mut out);
    if !check_cycles(cx, &graph, &mut out) {
        check_canary_order(cx, &graph, &mut out);
        if cx.production() || cx.canary_by_default() {
            check_production(cx, &graph, &mut out);
        }
    }
    if cx.production() {
        check_failure_paths(cx, &mut out);
    }
    check_policy(cx, &mut out);
    check_gitops(cx, &mut out);
    check_rendered(cx, &mut out);
    out.sort_by(|a, b| a.span.cmp(&b.span).then(a.code.cmp(&b.code)));
    out
}

/// Anything that names a step kind: steps, their compensations, handlers.
struct Configured<'a> {
    /// JSON pointer of the object (`/steps/3/compensate`).
    base: String,
    kind: &'a str,
    with: &'a Value,
    retry: Option<&'a Value>,
    /// How to call it in a message.
    what: &'static str,
}

fn configured(spec: &Spec) -> Vec<Configured<'_>> {
    let mut out = Vec::new();
    for (i, s) in spec.steps.iter().enumerate() {
        out.push(Configured {
            base: format!("/steps/{i}"),
            kind: &s.kind,
            with: &s.with,
            retry: s.retry.as_ref(),
            what: "step",
        });
        if let Some(c) = &s.compensate {
            out.push(Configured {
                base: format!("/steps/{i}/compensate"),
                kind: &c.kind,
                with: &c.with,
                retry: c.retry.as_ref(),
                what: "compensation",
            });
        }
    }
    for (i, h) in spec.on_failure.iter().enumerate() {
        out.push(Configured {
            base: format!("/on-failure/{i}"),
            kind: &h.kind,
            with: &h.with,
            retry: h.retry.as_ref(),
            what: "on-failure handler",
        });
    }
    out
}

/// Timeouts and retry policies everywhere they may appear.
fn check_policies(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let mut retry = |ptr: String, v: Option<&Value>| {
        let Some(v) = v else { return };
        if cx.schema_bad(&ptr) {
            return;
        }
        if let Err(errors) = RetryPolicy::from_value(v) {
            for e in errors {
                out.push(Diagnostic::new(
                    Code::InvalidRetry,
                    cx.span(&format!("{ptr}{}", e.pointer)),
                    e.message,
                ));
            }
        }
    };
    retry("/defaults/retry".into(), cx.spec.defaults.retry.as_ref());
    for c in configured(cx.spec) {
        retry(format!("{}/retry", c.base), c.retry);
    }
}

/// Each kind's own semantic checks of its `with`.
fn check_step_configs(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    for c in configured(cx.spec) {
        let Some(k) = cx.registry.get(c.kind) else {
            continue;
        };
        let with_ptr = format!("{}/with", c.base);
        if cx.schema_bad(&with_ptr) || cx.schema_bad(&format!("{}/type", c.base)) {
            continue;
        }
        for f in k.check(c.with) {
            let mut d = Diagnostic::new(f.code, cx.span(&format!("{with_ptr}{}", f.pointer)), f.message);
            d.help = f.help;
            out.push(d);
        }
    }
}

/// Each kind's checks of what it renders (manifests) in the spec's context,
/// with the code `run` uses to refuse it.
fn check_rendered(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    // A Strategy alone has no serving, model or manifests: its Rollouts do.
    if cx.spec.kind != crate::spec::Kind::Rollout {
        return;
    }
    let mut bcx = crate::registry::BuildContext::of_spec(cx.spec, cx.production(), std::path::Path::new("."));
    let steps = cx.spec.steps.iter().map(|s| s.id.as_str());
    let ids: Vec<&str> = steps.collect();
    for c in configured(cx.spec) {
        let Some(k) = cx.registry.get(c.kind) else {
            continue;
        };
        let with_ptr = format!("{}/with", c.base);
        if cx.schema_bad(&with_ptr) || cx.schema_bad(&format!("{}/type", c.base)) {
            continue;
        }
        // A compensation is built for the step it undoes.
        let owner = c
            .base
            .strip_prefix("/steps/")
            .and_then(|r| r.split('/').next())
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| ids.get(i).copied())
            .unwrap_or_default();
        bcx.step = owner.to_owned();
        for f in k.check_rendered(c.with, &bcx) {
            let here = cx.span(&format!("{with_ptr}{}", f.pointer));
            let mut d = match &f.at {
                Some((file, line, col)) => Diagnostic::new(
                    f.code,
                    crate::diag::Loc {
                        file: Some(file.clone().into()),
                        span: crate::diag::Span::point(crate::diag::Pos {
                            line: *line,
                            col: *col,
                        }),
                    },
                    f.message,
                )
                .with_related(here, format!("rendered for {} `{owner}`", c.what)),
                None => Diagnostic::new(f.code, here, f.message),
            };
            d.help = f.help;
            out.push(d);
        }
    }
}

/// The `needs` graph: node 0 is the virtual start, node `i + 1` is step `i`
/// (first occurrence of each id).
struct Graph {
    g: DiGraph<Option<usize>, ()>,
    start: NodeIndex,
    node_of: HashMap<String, NodeIndex>,
    /// (step index, needs index) of the edge, for locating cycle reports.
    edge_origin: HashMap<(NodeIndex, NodeIndex), (usize, usize)>,
}

impl Graph {
    fn step(&self, n: NodeIndex) -> Option<usize> {
        self.g[n]
    }
}

fn check_ids_and_needs(cx: &Context<'_>, out: &mut Vec<Diagnostic>) -> Graph {
    let mut first: HashMap<&str, String> = HashMap::new();
    let ids = cx
        .spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("/steps/{i}/id"), s.id.as_str()))
        .chain(
            cx.spec
                .on_failure
                .iter()
                .enumerate()
                .map(|(i, h)| (format!("/on-failure/{i}/id"), h.id.as_str())),
        );
    for (ptr, id) in ids {
        if let Some(prev) = first.get(id) {
            let prev_span = cx.span(prev);
            let prev_span_c = prev_span.clone();
            out.push(
                Diagnostic::new(
                    Code::DuplicateStepId,
                    cx.span(&ptr),
                    format!(
                        "duplicate step id `{id}` (first defined at {})",
                        where_(&prev_span)
                    ),
                )
                .with_label("defined again here")
                .with_related(prev_span_c, "first defined here")
                .with_help("step ids must be unique within a spec; rename one of them"),
            );
        } else {
            first.insert(id, ptr);
        }
    }

    let mut g = DiGraph::new();
    let start = g.add_node(None);
    let mut node_of = HashMap::new();
    for (i, s) in cx.spec.steps.iter().enumerate() {
        if !node_of.contains_key(&s.id) {
            node_of.insert(s.id.clone(), g.add_node(Some(i)));
        }
    }
    let mut graph = Graph {
        g,
        start,
        node_of,
        edge_origin: HashMap::new(),
    };
    let known: Vec<&str> = cx.spec.steps.iter().map(|s| s.id.as_str()).collect();
    for (i, s) in cx.spec.steps.iter().enumerate() {
        let me = graph.node_of[&s.id];
        if graph.step(me) != Some(i) {
            continue; // a duplicate, already reported
        }
        let mut has_edge = false;
        for (j, need) in s.needs.iter().enumerate() {
            let ptr = format!("/steps/{i}/needs/{j}");
            match graph.node_of.get(need) {
                Some(&dep) => {
                    graph.g.update_edge(dep, me, ());
                    graph.edge_origin.entry((dep, me)).or_insert((i, j));
                    has_edge = true;
                }
                None => {
                    let mut d = Diagnostic::new(
                        Code::UnknownNeeds,
                        cx.span(&ptr),
                        format!("step `{}` needs `{need}`, but no step has that id", s.id),
                    )
                    .with_label("unknown step");
                    if let Some(h) = did_you_mean(need, known.iter().copied()) {
                        d.help = Some(format!("did you mean `{h}`?"));
                    } else if cx.spec.on_failure.iter().any(|h| &h.id == need) {
                        d.help = Some("on-failure handlers cannot be needed by steps".into());
                    }
                    out.push(d);
                }
            }
        }
        if !has_edge {
            graph.g.add_edge(start, me, ());
        }
    }
    graph
}

/// Reports every cycle as a path; returns whether there was one.
fn check_cycles(cx: &Context<'_>, graph: &Graph, out: &mut Vec<Diagnostic>) -> bool {
    let mut found = false;
    for scc in petgraph::algo::tarjan_scc(&graph.g) {
        let self_loop = scc.len() == 1 && graph.g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        found = true;
        // Start at the step that comes first in the file, follow `needs`
        // (edges backwards) inside the component until we are back.
        let Some(&first) = scc.iter().min_by_key(|n| graph.step(**n)) else {
            continue;
        };
        let path = cycle_path(graph, &scc, first);
        let names: Vec<&str> = path
            .iter()
            .filter_map(|n| graph.step(*n).map(|i| cx.spec.steps[i].id.as_str()))
            .collect();
        // The `needs` entry of `path[0]` that points at `path[1]`.
        let (si, ni) = graph.edge_origin[&(path[1], path[0])];
        let mut d = Diagnostic::new(
            Code::Cycle,
            cx.span(&format!("/steps/{si}/needs/{ni}")),
            format!("dependency cycle: {}", names.join(" -> ")),
        )
        .with_label("this `needs` closes the cycle")
        .with_help("`a -> b` means `a` needs `b`; remove one of these `needs` so the steps can run in order");
        for w in path.windows(2).skip(1) {
            if let Some(&(si, ni)) = graph.edge_origin.get(&(w[1], w[0])) {
                d = d.with_related(cx.span(&format!("/steps/{si}/needs/{ni}")), "part of the cycle");
            }
        }
        out.push(d);
    }
    found
}

/// A path `first -> … -> first` following `needs` inside one component.
fn cycle_path(graph: &Graph, scc: &[NodeIndex], first: NodeIndex) -> Vec<NodeIndex> {
    // BFS over "needs" edges (incoming edges of the graph) inside the SCC.
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([first]);
    while let Some(n) = queue.pop_front() {
        for dep in graph.g.neighbors_directed(n, petgraph::Direction::Incoming) {
            if !scc.contains(&dep) {
                continue;
            }
            if dep == first {
                let mut path = vec![first];
                let mut cur = n;
                while cur != first {
                    path.push(cur);
                    cur = prev[&cur];
                }
                path.push(first);
                // path is first, …, n reversed except the ends: rebuild in order.
                let inner: Vec<NodeIndex> = path[1..path.len() - 1].iter().rev().copied().collect();
                let mut ordered = vec![first];
                ordered.extend(inner);
                ordered.push(first);
                return ordered;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(dep) {
                e.insert(n);
                queue.push_back(dep);
            }
        }
    }
    vec![first, first]
}

/// Canary weights never decrease along a path.
fn check_canary_order(cx: &Context<'_>, graph: &Graph, out: &mut Vec<Diagnostic>) {
    let weight = |i: usize| -> Option<u64> {
        let s = &cx.spec.steps[i];
        if cx.schema_bad(&format!("/steps/{i}/with")) {
            return None;
        }
        cx.registry.get(&s.kind)?.canary_weight(&s.with)
    };
    let shifts: Vec<(NodeIndex, usize, u64)> = graph
        .g
        .node_indices()
        .filter_map(|n| graph.step(n).and_then(|i| weight(i).map(|w| (n, i, w))))
        .collect();
    let mut reported = std::collections::HashSet::new();
    for &(from, fi, fw) in &shifts {
        // BFS forward, remembering the way back for the message.
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(n) = queue.pop_front() {
            for next in graph.g.neighbors(n) {
                if next == from || prev.contains_key(&next) {
                    continue;
                }
                prev.insert(next, n);
                queue.push_back(next);
            }
        }
        for &(to, ti, tw) in &shifts {
            if to == from || tw >= fw || !prev.contains_key(&to) || !reported.insert(ti) {
                continue;
            }
            let mut path = vec![to];
            let mut cur = to;
            while cur != from {
                cur = prev[&cur];
                path.push(cur);
            }
            path.reverse();
            let names: Vec<&str> = path
                .iter()
                .filter_map(|n| graph.step(*n).map(|i| cx.spec.steps[i].id.as_str()))
                .collect();
            let from_span = cx.span(&format!("/steps/{fi}/with/canary"));
            out.push(
                Diagnostic::new(
                    Code::CanaryDecreases,
                    cx.span(&format!("/steps/{ti}/with/canary")),
                    format!(
                        "canary weight decreases from {fw}% to {tw}% along {}",
                        names.join(" -> ")
                    ),
                )
                .with_label(format!("{tw}% after {fw}%"))
                .with_related(from_span, format!("set to {fw}% here"))
                .with_help("weights must not decrease along a path; returning traffic to stable is the rollback's job"),
            );
        }
    }
}

fn kind_of<'r>(cx: &'r Context<'_>, s: &Step) -> Option<&'r dyn StepKind> {
    cx.registry.get(&s.kind)
}

/// Gate dominance and canary-by-default, for production targets.
fn check_production(cx: &Context<'_>, graph: &Graph, out: &mut Vec<Diagnostic>) {
    let doms = dominators::simple_fast(&graph.g, graph.start);
    let is_gate = |i: usize| {
        let s = &cx.spec.steps[i];
        kind_of(cx, s).is_some_and(|k| k.role() == Role::Gate) && !s.continue_on_failure
    };
    let has_gate = cx
        .spec
        .steps
        .iter()
        .any(|s| kind_of(cx, s).is_some_and(|k| k.role() == Role::Gate));
    for (i, s) in cx.spec.steps.iter().enumerate() {
        let Some(k) = kind_of(cx, s) else { continue };
        if cx.production() && k.role() == Role::Gate && s.continue_on_failure {
            out.push(
                Diagnostic::new(
                    Code::GateCannotStop,
                    cx.span(&format!("/steps/{i}/continue-on-failure")),
                    format!("gate-check `{}` has `continue-on-failure: true`: a failing gate would not stop a production rollout", s.id),
                )
                .with_help("remove `continue-on-failure` from the gate"),
            );
        }
    }
    for n in graph.g.node_indices() {
        let Some(i) = graph.step(n) else { continue };
        let s = &cx.spec.steps[i];
        let Some(k) = kind_of(cx, s) else { continue };
        let chain: Vec<usize> = doms
            .dominators(n)
            .map(|it| it.filter_map(|d| graph.step(d)).filter(|&d| d != i).collect())
            .unwrap_or_default();
        if cx.production() && k.role() == Role::Promote && !chain.iter().any(|&d| is_gate(d)) {
            let msg = if has_gate {
                let path = path_avoiding_gates(cx, graph, n, &is_gate);
                format!(
                    "step `{}` ({}) changes production, but a path reaches it without passing a gate-check: {}",
                    s.id,
                    s.kind,
                    path.join(" -> ")
                )
            } else {
                format!(
                    "step `{}` ({}) changes production, but this rollout has no gate-check",
                    s.id, s.kind
                )
            };
            out.push(
                Diagnostic::new(
                    Code::UngatedProductionChange,
                    cx.span(&format!("/steps/{i}/type")),
                    msg,
                )
                .with_label("not guarded by a gate")
                .with_help(
                    "make it depend (directly or through its `needs`) on a gate-check for this model version",
                ),
            );
        }
        if cx.canary_by_default()
            && !cx.schema_bad(&format!("/steps/{i}/with"))
            && k.canary_weight(&s.with) == Some(100)
        {
            let partial_before = chain.iter().any(|&d| {
                let ds = &cx.spec.steps[d];
                kind_of(cx, ds)
                    .and_then(|dk| dk.canary_weight(&ds.with))
                    .is_some_and(|w| w > 0 && w < 100)
            });
            if !partial_before {
                let at = cx.span(&format!("/steps/{i}/with/canary"));
                out.push(match k.justification(&s.with) {
                    Some(why) => Diagnostic::new(
                        Code::JustifiedStraightToFull,
                        at,
                        format!("step `{}` sends 100% of production traffic to the new version without a canary (justified: {why})", s.id),
                    ),
                    None => Diagnostic::new(
                        Code::StraightToFull,
                        at,
                        format!(
                            "step `{}` sends 100% of production traffic to the new version without a canary step before it",
                            s.id
                        ),
                    )
                    .with_help("ramp up first (e.g. 5 -> 20 -> 50 -> 100), or add `justification:` to this step's `with`"),
                });
            }
        }
    }
}

/// Ids along some path from the start to `target` that passes no gate.
fn path_avoiding_gates(
    cx: &Context<'_>,
    graph: &Graph,
    target: NodeIndex,
    is_gate: &dyn Fn(usize) -> bool,
) -> Vec<String> {
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([target]);
    while let Some(n) = queue.pop_front() {
        for dep in graph.g.neighbors_directed(n, petgraph::Direction::Incoming) {
            if prev.contains_key(&dep) || graph.step(dep).is_some_and(is_gate) {
                continue;
            }
            prev.insert(dep, n);
            if dep == graph.start {
                let mut names = vec!["start".to_owned()];
                let mut cur = n;
                loop {
                    if let Some(i) = graph.step(cur) {
                        names.push(cx.spec.steps[i].id.clone());
                    }
                    if cur == target {
                        return names;
                    }
                    cur = prev[&cur];
                }
            }
            queue.push_back(dep);
        }
    }
    vec!["start".into(), "…".into()]
}

/// GitOps: on a target the policy declares GitOps-managed, nothing changes
/// the cluster directly (`target.gitops` is required). (A repository URL
/// with a password is caught by the credential-shape rule, RW061.)
fn check_gitops(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let Some(target) = cx.spec.target.as_ref() else {
        return;
    };
    if target.gitops.is_some() {
        return;
    }
    let Some(why) = cx.policy.and_then(|p| p.gitops_managed(cx.spec, cx.reached)) else {
        return;
    };
    for c in configured(cx.spec) {
        let Some(k) = cx.registry.get(c.kind) else {
            continue;
        };
        if !k.role().changes_target() {
            continue;
        }
        out.push(
            Diagnostic::new(
                Code::ImperativeOnGitOps,
                cx.span(&format!("{}/type", c.base)),
                format!(
                    "{} `{}` would change the cluster directly, but {why}: the controller would undo it or fight it",
                    c.what, c.kind
                ),
            )
            .with_help("declare `target.gitops: {repo, branch, path, controller, app}` so apply, shift-traffic and rollback commit to Git"),
        );
    }
}

/// The policy: a declared environment cannot dodge production, and gates
/// are at least as strict as the environment's minimum.
fn check_policy(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    check_default_gate(cx, out);
    let (Some(policy), Some(derived)) = (cx.policy, cx.environment()) else {
        return;
    };
    let declared = cx.spec.target.as_ref().map(|t| t.environment);
    if let (Some(reason), Some(declared)) = (&derived.reason, declared)
        && declared != Environment::Production
    {
        out.push(
            Diagnostic::new(
                Code::EnvironmentDodge,
                cx.span("/target/environment"),
                format!(
                    "the spec declares `environment: {}`, but this target is production: {reason}",
                    format!("{declared:?}").to_lowercase()
                ),
            )
            .with_help("declare `environment: production`; every production rule applies either way"),
        );
    }
    let Some(min) = policy.rules(derived.environment).and_then(|r| r.gate.as_ref()) else {
        return;
    };
    let gates: Vec<(usize, &Step)> = cx
        .spec
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| kind_of(cx, s).is_some_and(|k| k.role() == Role::Gate))
        .collect();
    let env = format!("{:?}", derived.environment).to_lowercase();
    if gates.is_empty() && cx.spec.target.is_some() {
        out.push(Diagnostic::new(
            Code::GateBelowPolicy,
            cx.span("/target"),
            format!("the policy requires a gate-check in {env}, and this rollout has none"),
        ));
    }
    for (i, g) in gates {
        if cx.schema_bad(&format!("/steps/{i}/with")) {
            continue;
        }
        let shortfall = kind_of(cx, g)
            .map(|k| k.shortfall(&g.with, min))
            .unwrap_or_default();
        for (rel, msg) in shortfall {
            let at = if cx.spec.steps[i].with.pointer(&rel).is_some() {
                cx.span(&format!("/steps/{i}/with{rel}"))
            } else {
                cx.span(&format!("/steps/{i}/type"))
            };
            out.push(
                Diagnostic::new(
                    Code::GateBelowPolicy,
                    at,
                    format!("gate-check `{}` is weaker than the {env} policy: {msg}", g.id),
                )
                .with_help("a spec may be stricter than the policy, never weaker"),
            );
        }
    }
}

/// Without a policy that sets the production minimum gate, a production
/// gate must still require something: an approval (or a registry alias a
/// person set) *and* at least one eval threshold. `approvals: 0` and no
/// alias would let any registered version through.
fn check_default_gate(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    if !cx.production() {
        return;
    }
    let set_by_policy = cx
        .policy
        .and_then(|p| p.rules(Environment::Production))
        .is_some_and(|r| r.gate.is_some());
    if set_by_policy {
        return;
    }
    for (i, s) in cx.spec.steps.iter().enumerate() {
        if !kind_of(cx, s).is_some_and(|k| k.role() == Role::Gate)
            || cx.schema_bad(&format!("/steps/{i}/with"))
        {
            continue;
        }
        let w = &s.with;
        let approvals = w.get("approvals").and_then(Value::as_u64).unwrap_or(1);
        let alias = w
            .get("alias")
            .and_then(Value::as_str)
            .is_some_and(|a| !a.is_empty());
        if approvals == 0 && !alias {
            let at = if w.get("approvals").is_some() {
                format!("/steps/{i}/with/approvals")
            } else {
                format!("/steps/{i}/with")
            };
            out.push(
                Diagnostic::new(
                    Code::GateRequiresNothing,
                    cx.span(&at),
                    format!("production gate-check `{}` requires no approval and no alias: any registered version would pass", s.id),
                )
                .with_help("require `approvals: 1` (or more) or an `alias`, or set the production minimum gate in the platform policy"),
            );
        }
        let evals = w
            .get("evals")
            .and_then(Value::as_object)
            .is_some_and(|e| !e.is_empty());
        if !evals {
            out.push(
                Diagnostic::new(
                    Code::GateRequiresNothing,
                    cx.span(&format!("/steps/{i}/with")),
                    format!("production gate-check `{}` checks no eval: a version that fails its evaluation would pass", s.id),
                )
                .with_help("add `evals: {METRIC: {min: …}}`, or set the production minimum gate in the platform policy"),
            );
        }
    }
}

/// In production, failure paths (compensations, on-failure) must not promote.
fn check_failure_paths(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    for c in configured(cx.spec) {
        if c.what == "step" || !cx.registry.get(c.kind).is_some_and(|k| k.role() == Role::Promote) {
            continue;
        }
        out.push(
            Diagnostic::new(
                Code::MutatingFailureHandler,
                cx.span(&format!("{}/type", c.base)),
                format!(
                    "{} of type `{}` would change production on a failure path, where no gate protects it",
                    c.what, c.kind
                ),
            )
            .with_help("use `rollback` to return to the last known-good state, or `notify`"),
        );
    }
}

/// Step ids named inside `with` (rollback `restore`) must exist and be restorable.
fn check_step_refs(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let ids: Vec<&str> = cx.spec.steps.iter().map(|s| s.id.as_str()).collect();
    for c in configured(cx.spec) {
        let Some(k) = cx.registry.get(c.kind) else {
            continue;
        };
        if cx.schema_bad(&format!("{}/with", c.base)) {
            continue;
        }
        for (rel, id) in k.step_refs(c.with) {
            let span = cx.span(&format!("{}/with{rel}", c.base));
            let kind = c.kind;
            match cx.spec.steps.iter().find(|s| s.id == id) {
                None => {
                    let mut d = Diagnostic::new(
                        Code::UnknownCompensation,
                        span,
                        format!("`{kind}` refers to step `{id}`, but no step has that id"),
                    );
                    if let Some(h) = did_you_mean(&id, ids.iter().copied()) {
                        d.help = Some(format!("did you mean `{h}`?"));
                    }
                    out.push(d);
                }
                Some(s) if kind_of(cx, s).is_some_and(|k| k.role() != Role::Promote) => {
                    out.push(
                        Diagnostic::new(
                            Code::UnknownCompensation,
                            span,
                            format!(
                                "`{kind}` refers to step `{id}` ({}), which changes nothing that could be restored",
                                s.kind
                            ),
                        )
                        .with_help("list the apply and shift-traffic steps whose changes to undo"),
                    );
                }
                Some(_) => {}
            }
        }
    }
}

/// A hold cannot finish inside a timeout shorter than its duration.
fn check_hold_timeouts(cx: &Context<'_>, out: &mut Vec<Diagnostic>) {
    for (i, s) in cx.spec.steps.iter().enumerate() {
        let Some(k) = kind_of(cx, s) else { continue };
        if cx.schema_bad(&format!("/steps/{i}/with")) {
            continue;
        }
        let Some(hold) = k.min_duration(&s.with) else {
            continue;
        };
        let (timeout, ptr) = match (&s.timeout, &cx.spec.defaults.timeout) {
            (Some(t), _) => (t, format!("/steps/{i}/timeout")),
            (None, Some(t)) => (t, "/defaults/timeout".to_owned()),
            (None, None) => continue,
        };
        let Ok(t) = duration::parse(timeout) else { continue };
        if t < hold {
            let inherited = s.timeout.is_none();
            let mut d = Diagnostic::new(
                Code::TimeoutShorterThanHold,
                if inherited {
                    cx.span(&format!("/steps/{i}/type"))
                } else {
                    cx.span(&ptr)
                },
                format!(
                    "step `{}` holds for {} but its timeout is {}{}: it can never succeed",
                    s.id,
                    duration::Display(hold),
                    duration::Display(t),
                    if inherited {
                        " (from `defaults.timeout`)"
                    } else {
                        ""
                    }
                ),
            )
            .with_related(cx.span(&format!("/steps/{i}/with/duration")), "hold duration")
            .with_help("raise the step's `timeout` above the hold duration (plus time for analysis)");
            if inherited {
                d = d.with_related(cx.span(&ptr), "default timeout");
            }
            out.push(d);
        }
    }
}

/// Key names whose values are credentials: the name, ignoring case, `-`
/// and `_`, ends with one of these words (`apiKey`, `webhook_token`, …) —
/// but not `secretRef`, `token-url` or `maxTokens`.
fn sensitive_key(key: &str) -> bool {
    const ENDS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "accesskey",
        "secretkey",
        "privatekey",
        "credential",
        "credentials",
        "clientsecret",
        "authorization",
    ];
    // Compare from the end, skipping separators, without allocating; most
    // keys are rejected by their last letter.
    let last = key
        .bytes()
        .rev()
        .find(|b| *b != b'-' && *b != b'_')
        .map(|b| b.to_ascii_lowercase());
    if !matches!(last, Some(b'd' | b't' | b'n' | b'y' | b'l' | b's')) {
        return false;
    }
    let letters = || {
        key.bytes()
            .rev()
            .filter(|b| *b != b'-' && *b != b'_')
            .map(|b| b.to_ascii_lowercase())
    };
    ENDS.iter().any(|e| {
        let mut it = letters();
        e.bytes().rev().all(|c| it.next() == Some(c))
    })
}

/// An environment variable name that holds a credential: a word of it
/// (`_`-separated) is PASS, PASSWORD, PWD, SECRET, TOKEN, APIKEY, CREDS…, or
/// it ends in a key of some kind (`API_KEY`, `ACCESS_KEY`, `SIGNING_KEY`).
#[must_use]
pub fn sensitive_env_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let words: Vec<&str> = upper.split(['_', '-', '.']).filter(|w| !w.is_empty()).collect();
    let credential = |w: &&str| {
        matches!(
            *w,
            "PASS"
                | "PASSWORD"
                | "PASSWD"
                | "PWD"
                | "SECRET"
                | "SECRETS"
                | "TOKEN"
                | "APIKEY"
                | "CREDENTIAL"
                | "CREDENTIALS"
                | "CREDS"
                | "PRIVATEKEY"
        )
    };
    let keyed = words.len() >= 2
        && words.last() == Some(&"KEY")
        && matches!(
            words[words.len() - 2],
            "API" | "ACCESS" | "SECRET" | "PRIVATE" | "SIGNING" | "ENCRYPTION" | "MASTER" | "AUTH" | "CLIENT"
        );
    words.iter().any(credential) || keyed
}

/// The pattern a base64-encoded value decodes to, if it is a token.
fn base64_token(s: &str) -> Option<usize> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let t = s.trim();
    if t.len() < 20
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
    {
        return None;
    }
    let bytes = STANDARD
        .decode(t)
        .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (set, _) = token_patterns();
    set.matches(&text).iter().next()
}

fn token_patterns() -> &'static (RegexSet, Vec<&'static str>) {
    static SET: OnceLock<(RegexSet, Vec<&'static str>)> = OnceLock::new();
    SET.get_or_init(|| {
        let pats: &[(&str, &str)] = &[
            (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "an AWS access key id"),
            (r"\bgh[pousr]_[A-Za-z0-9]{36,}", "a GitHub token"),
            (r"\bgithub_pat_[A-Za-z0-9_]{22,}", "a GitHub token"),
            (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "a Slack token"),
            (
                r"hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]+",
                "a Slack webhook URL",
            ),
            (r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "a private key"),
            (
                r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
                "a JSON Web Token",
            ),
            (r"\bAIza[0-9A-Za-z_-]{35}", "a Google API key"),
            (r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}", "an API secret key"),
            (r"\b[rs]k_live_[A-Za-z0-9]{16,}", "a Stripe key"),
            (r"\bhf_[A-Za-z0-9]{30,}", "a Hugging Face token"),
            (
                r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@{}]{4,}@",
                "a URL with an embedded password",
            ),
            (r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}", "a bearer token"),
        ];
        let set = RegexSet::new(pats.iter().map(|(p, _)| *p))
            // Constant patterns: a failure is a bug that `token_shapes` catches.
            .expect("token patterns compile");
        (set, pats.iter().map(|(_, n)| *n).collect())
    })
}

fn is_template(s: &str) -> bool {
    let t = s.trim();
    t.starts_with("{{") && t.ends_with("}}")
}

/// Literal secrets and credential-shaped values anywhere in the document.
/// Returns the findings and the secret values themselves, so that the
/// caller can scrub them from every other message before printing.
#[must_use]
pub fn secrets(doc: &Document) -> (Vec<Diagnostic>, Vec<String>) {
    let mut out = Vec::new();
    let mut found = Vec::new();
    let mut ptr = String::new();
    walk_secrets(doc, &doc.value, &mut ptr, &mut out, &mut found);
    found.sort();
    found.dedup();
    (out, found)
}

fn literal_secret(doc: &Document, ptr: &str, message: String, help: String) -> Diagnostic {
    let sp = doc.locate(ptr);
    Diagnostic::new(Code::LiteralSecret, sp, message)
        .with_label("literal secret")
        .with_redaction(sp)
        .with_help(help)
}

fn walk_secrets(
    doc: &Document,
    v: &Value,
    ptr: &mut String,
    out: &mut Vec<Diagnostic>,
    found: &mut Vec<String>,
) {
    match v {
        Value::Object(m) => {
            // Kubernetes env entries: {name: API_TOKEN, value: "literal"}.
            if let (Some(Value::String(name)), Some(Value::String(val))) = (m.get("name"), m.get("value"))
                && (sensitive_key(name) || sensitive_env_name(name))
                && !val.is_empty()
                && !is_template(val)
            {
                found.push(val.clone());
                out.push(literal_secret(
                    doc,
                    &format!("{ptr}/value"),
                    format!("environment variable `{name}` has a literal secret value"),
                    "use `valueFrom: {secretKeyRef: {name: …, key: …}}`".into(),
                ));
            }
            for (k, child) in m {
                let len = ptr.len();
                push_pointer_segment(ptr, k);
                let literal = match child {
                    Value::String(s) if !s.is_empty() && !is_template(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                match literal {
                    Some(text) if sensitive_key(k) => {
                        found.push(text);
                        out.push(literal_secret(
                            doc,
                            ptr,
                            format!("`{k}` has a literal value; secrets must be references"),
                            format!("write `{k}: {{secretRef: NAME}}` or `{k}: {{env: VARIABLE}}`"),
                        ));
                    }
                    _ => walk_secrets(doc, child, ptr, out, found),
                }
                ptr.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let len = ptr.len();
                let _ = write!(ptr, "/{i}");
                walk_secrets(doc, child, ptr, out, found);
                ptr.truncate(len);
            }
        }
        // Every pattern needs at least 12 characters.
        Value::String(s) if s.len() >= 12 => {
            let (set, names) = token_patterns();
            let direct = set.is_match(s).then(|| set.matches(s).iter().next()).flatten();
            // A token base64-encoded (a Secret's `data`, a header value) is one too.
            let encoded = direct.is_none().then(|| base64_token(s)).flatten();
            if let Some((i, how)) = direct
                .map(|i| (i, ""))
                .or(encoded.map(|i| (i, "a base64-encoded ")))
            {
                found.push(s.clone());
                let sp = doc.locate(ptr);
                let what = if how.is_empty() {
                    names[i].to_owned()
                } else {
                    format!(
                        "{how}{}",
                        names[i].trim_start_matches("a ").trim_start_matches("an ")
                    )
                };
                out.push(
                    Diagnostic::new(Code::TokenShapedValue, sp, format!("value looks like {what}"))
                        .with_label("credential-shaped value")
                        .with_redaction(sp)
                        .with_help(
                            "never commit credentials: reference them with `{secretRef: NAME}` or `{env: VARIABLE}`, and rotate this one",
                        ),
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_keys() {
        for k in [
            "password",
            "api-key",
            "apiKey",
            "webhook_token",
            "clientSecret",
            "Authorization",
        ] {
            assert!(sensitive_key(k), "{k}");
        }
        for k in [
            "secretRef",
            "secretName",
            "token-url",
            "maxTokens",
            "auth-policy",
            "name",
        ] {
            assert!(!sensitive_key(k), "{k}");
        }
    }

    #[test]
    fn credential_env_names() {
        for n in [
            "DB_PASS",
            "SMTP_PASSWORD",
            "MYSQL_PWD",
            "API_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "GH_TOKEN",
            "REDIS_CREDS",
        ] {
            assert!(sensitive_env_name(n), "{n}");
        }
        for n in [
            "CACHE_KEY_PREFIX",
            "BYPASS_CACHE",
            "COMPASS_URL",
            "MODEL_NAME",
            "PUBLIC_KEY_PATH",
        ] {
            assert!(!sensitive_env_name(n), "{n}");
        }
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode("ghp_0123456789abcdefghijklmnopqrstuvwxyzAB");
        assert!(base64_token(&encoded).is_some());
        assert!(
            base64_token("aGVsbG8gd29ybGQgdGhpcyBpcyBmaW5l").is_none(),
            "hello world is no token"
        );
    }

    #[test]
    fn token_shapes() {
        let (set, _) = token_patterns();
        assert!(set.is_match("ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"));
        assert!(set.is_match("AKIAIOSFODNN7EXAMPLE"));
        assert!(set.is_match("https://user:hunter2@example.com/x"));
        assert!(!set.is_match("https://example.com/{{params.x}}"));
        assert!(!set.is_match("fraud-detector"));
    }
}
