//! The resources the sim serves.

/// A served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind name.
    pub kind: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names kubectl accepts.
    pub short: &'static [&'static str],
}

const fn k(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Kind {
    Kind {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
    }
}

/// Every resource the sim serves.
pub const KINDS: &[Kind] = &[
    k("", "v1", "Namespace", "namespaces", false, &["ns"]),
    k("", "v1", "Pod", "pods", true, &["po"]),
    k("", "v1", "Service", "services", true, &["svc"]),
    k("", "v1", "ConfigMap", "configmaps", true, &["cm"]),
    k("", "v1", "Secret", "secrets", true, &[]),
    k("", "v1", "Event", "events", true, &["ev"]),
    k("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"]),
    k("apps", "v1", "Deployment", "deployments", true, &["deploy"]),
    k("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"]),
    k("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[]),
    k(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        &[],
    ),
    k("coordination.k8s.io", "v1", "Lease", "leases", true, &[]),
    k("networking.k8s.io", "v1", "Ingress", "ingresses", true, &["ing"]),
    k(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
    ),
    k(
        "argoproj.io",
        "v1alpha1",
        "Application",
        "applications",
        true,
        &["app", "apps"],
    ),
    k(
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
        "gitrepositories",
        true,
        &["gitrepo"],
    ),
    k(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
        true,
        &["ks"],
    ),
    k(
        "serving.kserve.io",
        "v1beta1",
        "InferenceService",
        "inferenceservices",
        true,
        &["isvc"],
    ),
    k(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
        "virtualservices",
        true,
        &["vs"],
    ),
    k(
        "networking.istio.io",
        "v1beta1",
        "DestinationRule",
        "destinationrules",
        true,
        &["dr"],
    ),
    k(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
        "httproutes",
        true,
        &[],
    ),
    k(
        "split.smi-spec.io",
        "v1alpha2",
        "TrafficSplit",
        "trafficsplits",
        true,
        &["ts"],
    ),
    k(
        "machinelearning.seldon.io",
        "v1",
        "SeldonDeployment",
        "seldondeployments",
        true,
        &["sdep"],
    ),
];

/// The kind served at `group/version/plural`.
#[must_use]
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// `apiVersion` of a kind.
#[must_use]
pub fn api_version(k: &Kind) -> String {
    if k.group.is_empty() {
        k.version.to_owned()
    } else {
        format!("{}/{}", k.group, k.version)
    }
}
