//! The Kubernetes manifests in deploy/k8s are well-formed and agree with the program: every
//! file parses, selectors match the pods they select, each Deployment runs a role that exists
//! on the ports the configuration uses, probes point at endpoints the API serves, and the
//! shared configuration passes `livecomments check-config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

/// Every YAML document of every file, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name} does not parse as YAML: {e}"));
            out.push((name.clone(), v));
        }
    }
    out
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn labels(v: &Value) -> BTreeSet<(String, String)> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn manifests_agree_with_the_program() {
    let docs = documents();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Kustomization",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in deploy/k8s");
    }
    let mut pod_labels = Vec::new();
    let mut roles_seen = BTreeSet::new();
    for (file, d) in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        if d["kind"] == "Kustomization" {
            continue;
        }
        assert!(
            s(d, &["metadata", "name"]).as_str().is_some(),
            "{file}: metadata.name"
        );
        if d["kind"] != "Deployment" {
            continue;
        }
        let template = labels(s(d, &["spec", "template", "metadata", "labels"]));
        let selector = labels(s(d, &["spec", "selector", "matchLabels"]));
        assert!(
            selector.is_subset(&template),
            "{file}: the selector does not select the Deployment's own pods"
        );
        pod_labels.push(template);
        let c = &s(d, &["spec", "template", "spec", "containers"])[0];
        let env = c["env"].as_sequence().expect("env");
        let role = env
            .iter()
            .find(|e| e["name"] == "LIVECOMMENTS__CLUSTER__ROLES")
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{file}: no LIVECOMMENTS__CLUSTER__ROLES"));
        for r in role.split(',') {
            assert!(
                ["broker", "bridge", "moderation", "api"].contains(&r),
                "{file}: unknown role {r}"
            );
            roles_seen.insert(r.to_string());
        }
        for var in [
            "LIVECOMMENTS__CLUSTER__NODE_ID",
            "LIVECOMMENTS__AUTH__JWT_SECRET",
        ] {
            assert!(
                env.iter().any(|e| e["name"] == var),
                "{file}: {var} is not set"
            );
        }
        let ports: BTreeSet<u64> = c["ports"]
            .as_sequence()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["containerPort"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        let want: BTreeSet<u64> = match role {
            "broker" => [1883, 8083].into(),
            "api" => [8080].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(
            ports, want,
            "{file}: ports of the {role} role's default config"
        );
        if let Some(path) = s(c, &["readinessProbe", "httpGet", "path"]).as_str() {
            assert_eq!(path, "/readyz", "{file}: readiness is /readyz");
        }
        if let Some(path) = s(c, &["livenessProbe", "httpGet", "path"]).as_str() {
            assert_eq!(path, "/healthz", "{file}: liveness is /healthz");
        }
        assert!(
            !c["readinessProbe"].is_null() || role != "broker" && role != "api",
            "{file}: serving roles need a readiness probe"
        );
    }
    assert_eq!(
        roles_seen,
        ["api", "bridge", "broker", "moderation"]
            .map(String::from)
            .into(),
        "every role is deployed"
    );
    for (file, d) in &docs {
        let selector = match d["kind"].as_str() {
            Some("Service") => labels(s(d, &["spec", "selector"])),
            Some("PodDisruptionBudget") => labels(s(d, &["spec", "selector", "matchLabels"])),
            _ => continue,
        };
        assert!(
            pod_labels.iter().any(|p| selector.is_subset(p)),
            "{file}: {} selects no pods",
            s(d, &["metadata", "name"]).as_str().unwrap()
        );
    }

    // Kustomize lists every file.
    let listed: BTreeSet<String> = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Kustomization")
        .map(|(_, d)| {
            d["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap();
    let files: BTreeSet<String> = docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");

    // The shared configuration is valid for each role.
    let toml = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .and_then(|(_, d)| s(d, &["data", "cluster.toml"]).as_str())
        .expect("cluster.toml in the ConfigMap")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, toml).unwrap();
    for role in &roles_seen {
        let out = Command::new(env!("CARGO_BIN_EXE_livecomments"))
            .arg("check-config")
            .arg(&file)
            .env("LIVECOMMENTS__CLUSTER__ROLES", role)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "check-config of the ConfigMap as {role}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
