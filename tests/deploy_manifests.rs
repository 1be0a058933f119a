//! The deployment files agree with each other and with the engine: every Kubernetes manifest
//! and the compose file parse; the image name and tag match the package; the command runs a
//! spec that exists where it is mounted and passes `etl-engine validate` with the environment
//! the deployment sets (so a misspelled `ETL_SPEC_...` override fails here); ports, user and
//! grace period fit the engine's behaviour. No cluster or Docker engine is needed.

mod common;
use common::*;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document in a file (`---`-separated), empty ones skipped.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

/// Follows a dotted path (`spec.template.spec`, numeric parts index sequences).
fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) if v.is_sequence() => &v[i],
        _ => &v[k],
    })
}

struct K8s {
    /// (file name, document)
    docs: Vec<(String, Value)>,
}

impl K8s {
    fn load() -> Self {
        let dir = root().join("deploy/kubernetes");
        let mut docs = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                for d in documents(&p) {
                    docs.push((name.clone(), d));
                }
            }
        }
        assert!(
            docs.len() >= 5,
            "expected the Kubernetes manifests in {}",
            dir.display()
        );
        K8s { docs }
    }
    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    }
    fn one(&self, kind: &str) -> &Value {
        let all = self.kind(kind);
        assert_eq!(all.len(), 1, "expected exactly one {kind}");
        all[0]
    }
    fn named(&self, kind: &str, name: &str) -> &Value {
        self.kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }
}

/// `name:tag` split, registry path dropped.
fn image_parts(image: &str) -> (String, String) {
    let last = image.rsplit('/').next().unwrap();
    let (name, tag) = last.split_once(':').unwrap_or((last, "latest"));
    (name.to_string(), tag.to_string())
}

/// The value of `--flag VALUE` in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// Runs `etl-engine validate` on a spec with the given environment; panics with its output on failure.
fn validate_with_env(spec: &Path, env: &BTreeMap<String, String>, what: &str) {
    let mut c = engine();
    c.arg("validate").arg(spec);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: `etl-engine validate` rejects the spec with the environment it is given ({env:?}):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Environment variables the engine (or a library it uses) reads, besides `ETL_SPEC_*`
/// overrides, which `validate` checks against the spec types.
fn known_env(name: &str) -> bool {
    name == etl_engine::crypto::keyring::KEYRING_ENV
        || name == etl_engine::crypto::keyring::KEYRING_JSON_ENV
        || name == "RUST_LOG"
        || name == "NO_COLOR"
        || name.starts_with("AWS_")
        || name.starts_with(etl_engine::spec::load::ENV_PREFIX)
}

fn spec_yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("spec parses")
}

/// The Dockerfile's instructions as (INSTRUCTION, rest), comments and continuations folded.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (ins, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((ins.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

fn dockerfile_user() -> u64 {
    let users: Vec<String> = dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, r)| r)
        .collect();
    let last = users.last().expect("the Dockerfile sets a USER");
    last.split(':')
        .next()
        .unwrap()
        .parse()
        .expect("USER is numeric, so Kubernetes can verify runAsNonRoot")
}

#[test]
fn kubernetes_manifests_parse_and_the_kustomization_lists_them_all() {
    let k = K8s::load();
    for (file, d) in &k.docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{file}: a document without apiVersion/kind"
        );
        if d["kind"] != "Kustomization" {
            assert!(
                d["metadata"]["name"].is_string(),
                "{file}: a {} without metadata.name",
                s(d, "kind")
            );
        }
    }
    let kz = k.one("Kustomization");
    let listed: BTreeSet<String> = kz["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = k
        .docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml must list exactly the manifests in deploy/kubernetes"
    );
    // The image the kustomization pins is the one the Deployment names.
    let img = &kz["images"][0];
    let deploy = k.one("Deployment");
    let (name, tag) = image_parts(s(deploy, "spec.template.spec.containers.0.image"));
    assert_eq!(s(img, "name"), name);
    assert_eq!(s(img, "newTag"), tag);
}

#[test]
fn deployment_runs_a_valid_spec_with_the_environment_it_sets() {
    let k = K8s::load();
    let d = k.one("Deployment");
    let pod = get(d, "spec.template.spec");
    let c = &pod["containers"][0];

    let (name, tag) = image_parts(s(c, "image"));
    assert_eq!(name, env!("CARGO_PKG_NAME"), "image name");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "image tag follows the package version"
    );

    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "run");
    let spec_path = Path::new(&args[1]);
    assert!(
        c["command"].is_null(),
        "the image's ENTRYPOINT is the engine; only args are set"
    );

    // The spec file comes from a ConfigMap volume mounted at its directory.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume_at = |path: &Path| -> &Value {
        let m = mounts
            .iter()
            .find(|m| path.parent() == Some(Path::new(s(m, "mountPath"))))
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
        assert_eq!(m["readOnly"], true, "{m:?}");
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", m["name"]))
    };
    let cm_name = s(volume_at(spec_path), "configMap.name");
    let cm = k.named("ConfigMap", cm_name);
    let file = spec_path.file_name().unwrap().to_str().unwrap();
    let spec_text = cm["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {file}"));

    // Environment: only names the engine reads; secrets stand in with plausible values.
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = s(e, "name").to_string();
        assert!(known_env(&name), "the engine does not read {name}");
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let secret = s(e, "valueFrom.secretKeyRef.name");
            let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
            assert!(
                readme.contains(secret),
                "deploy/README.md must say how to create the Secret {secret}"
            );
            "postgres://etl:secret@db.example:5432/etl".to_string()
        };
        env.insert(name, value);
    }
    let keyring = Path::new(
        env.get("ETL_KEYRING")
            .expect("the Deployment names the keyring file"),
    );
    let kv = volume_at(keyring);
    let secret = s(kv, "secret.secretName");
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    assert!(
        readme.contains(secret) && readme.contains(keyring.file_name().unwrap().to_str().unwrap()),
        "README: {secret}"
    );
    let mode = kv["secret"]["defaultMode"]
        .as_u64()
        .expect("the keyring mode is set");
    assert_eq!(
        mode & 0o007,
        0,
        "the keyring must not be world-readable: {mode:o}"
    );

    let dir = tempfile::tempdir().unwrap();
    let spec_file = dir.path().join(file);
    std::fs::write(&spec_file, spec_text).unwrap();
    validate_with_env(&spec_file, &env, "deploy/kubernetes/configmap.yaml");

    // Same pipeline as the repository's spec: only where it reads from and writes to may differ.
    let deployed = spec_yaml(spec_text);
    let local = spec_yaml(&std::fs::read_to_string(root().join("specs").join(file)).unwrap());
    for key in [
        "name",
        "columns",
        "target.table",
        "vault.table",
        "rejects.table",
    ] {
        assert_eq!(
            get(&deployed, key),
            get(&local, key),
            "{key} differs between the ConfigMap and specs/{file}"
        );
    }
    assert!(
        deployed["source"]["endpoint_url"].is_null(),
        "the deployed spec talks to AWS, not LocalStack"
    );

    // Shutdown gives up writing after half the visibility timeout; the grace period must cover it.
    let vt = deployed["source"]["visibility_timeout_secs"]
        .as_u64()
        .unwrap_or(30);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds is set");
    assert!(
        grace >= vt / 2 + 10,
        "terminationGracePeriodSeconds {grace} must exceed half of visibility_timeout_secs {vt} plus a margin"
    );

    // Metrics: the port the engine binds is the one declared, probed and annotated.
    let port = port_of(flag(&args, "--metrics-addr").expect("--metrics-addr is set"));
    let cport = &c["ports"][0];
    assert_eq!(cport["containerPort"].as_u64(), Some(port));
    assert_eq!(
        get(d, "spec.template.metadata.annotations")["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    let probe = &c["livenessProbe"]["httpGet"];
    assert!(
        probe["port"] == cport["name"] || probe["port"].as_u64() == Some(port),
        "{probe:?}"
    );
    assert_eq!(s(probe, "path"), "/healthz");
    assert_eq!(
        flag(&args, "--log-format"),
        Some("json"),
        "collectors get structured logs"
    );

    // The pod runs as the image's user.
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_u64(),
        Some(dockerfile_user())
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    let sa = s(pod, "serviceAccountName");
    k.named("ServiceAccount", sa);
}

#[test]
fn keda_scales_the_deployment_on_the_spec_queue() {
    let k = K8s::load();
    let d = k.one("Deployment");
    let so = k.one("ScaledObject");
    assert_eq!(get(so, "spec.scaleTargetRef.name"), get(d, "metadata.name"));
    let (min, max) = (
        so["spec"]["minReplicaCount"].as_u64().unwrap(),
        so["spec"]["maxReplicaCount"].as_u64().unwrap(),
    );
    let replicas = d["spec"]["replicas"].as_u64().unwrap();
    assert!(
        min >= 1 && min <= replicas && replicas <= max,
        "replicas {replicas} outside {min}..={max}"
    );

    let t = &so["spec"]["triggers"][0];
    assert_eq!(s(t, "type"), "aws-sqs-queue");
    let auth = s(t, "authenticationRef.name");
    assert_eq!(
        s(
            k.named("TriggerAuthentication", auth),
            "spec.podIdentity.provider"
        ),
        "aws"
    );
    let url = s(t, "metadata.queueURL");
    let region = s(t, "metadata.awsRegion");
    assert!(
        s(t, "metadata.queueLength")
            .parse::<u64>()
            .is_ok_and(|n| n > 0)
    );

    let cm = k.one("ConfigMap");
    let (_, spec_text) = cm["data"].as_mapping().unwrap().iter().next().unwrap();
    let spec = spec_yaml(spec_text.as_str().unwrap());
    let queue = s(&spec, "source.queue");
    assert!(
        url.ends_with(&format!("/{queue}")),
        "KEDA watches {url}, the engine reads {queue}"
    );
    assert!(
        url.contains(&format!("sqs.{region}.")),
        "queueURL {url} is not in awsRegion {region}"
    );
    assert_eq!(s(&spec, "source.region"), region);
}

#[test]
fn compose_engine_service_runs_the_repository_spec_against_the_compose_services() {
    let compose = documents(&root().join("docker-compose.yml")).remove(0);
    let services = &compose["services"];
    let e = &services["engine"];
    assert!(e.is_mapping(), "docker-compose.yml has an engine service");
    for dep in ["localstack", "postgres"] {
        assert_eq!(
            e["depends_on"][dep]["condition"], "service_healthy",
            "engine waits for {dep}"
        );
    }
    assert_eq!(e["build"], ".", "built from the repository's Dockerfile");
    let k = K8s::load();
    let k8s_image = image_parts(s(
        k.one("Deployment"),
        "spec.template.spec.containers.0.image",
    ));
    assert_eq!(
        image_parts(s(e, "image")),
        k8s_image,
        "compose and Kubernetes use the same image"
    );

    let args: Vec<String> = e["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "run");

    // Bind mounts: container path -> host path (compose `${VAR:-default}` resolved to its default).
    let mut mounts: Vec<(String, String)> = Vec::new();
    for v in e["volumes"].as_sequence().unwrap() {
        let (src, dst) = match v.as_str() {
            Some(short) => {
                let mut p = short.split(':');
                (p.next().unwrap().to_string(), p.next().unwrap().to_string())
            }
            None => (s(v, "source").to_string(), s(v, "target").to_string()),
        };
        let src = match src.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(var) => var
                .split_once(":-")
                .expect("a default for the variable")
                .1
                .to_string(),
            None => src,
        };
        mounts.push((dst, src));
    }
    let host_path = |container: &str| -> PathBuf {
        let (dst, src) = mounts
            .iter()
            .filter(|(dst, _)| container == dst || container.starts_with(&format!("{dst}/")))
            .max_by_key(|(dst, _)| dst.len())
            .unwrap_or_else(|| panic!("nothing is mounted at {container}"));
        root().join(src).join(
            container
                .strip_prefix(dst.as_str())
                .unwrap()
                .trim_start_matches('/'),
        )
    };
    let spec = host_path(&args[1]);
    assert!(
        spec.is_file(),
        "the engine runs {} which maps to {}, not a file",
        args[1],
        spec.display()
    );

    let mut env = BTreeMap::new();
    for (k, v) in e["environment"].as_mapping().unwrap() {
        let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap());
        assert!(known_env(k), "the engine does not read {k}");
        env.insert(k.to_string(), v.to_string());
    }
    validate_with_env(&spec, &env, "docker-compose.yml engine service");
    let keyring = env.get("ETL_KEYRING").expect("ETL_KEYRING is set");
    assert!(
        mounts.iter().any(|(dst, _)| dst == keyring),
        "the keyring {keyring} is a mounted file"
    );

    // The overrides point at the compose services on their container ports.
    let sqs = env
        .get("ETL_SPEC_SOURCE__ENDPOINT_URL")
        .expect("SQS endpoint override");
    let db = env
        .get("ETL_SPEC_TARGET__URL")
        .expect("Postgres URL override");
    let container_port = |svc: &str| -> u64 {
        let p = services[svc]["ports"][0].as_str().unwrap();
        p.rsplit(':').next().unwrap().parse().unwrap()
    };
    assert!(
        sqs.contains(&format!("//localstack:{}", container_port("localstack"))),
        "{sqs}"
    );
    assert!(
        db.contains(&format!("@postgres:{}/", container_port("postgres"))),
        "{db}"
    );

    let port = port_of(flag(&args, "--metrics-addr").expect("--metrics-addr is set"));
    let published = e["ports"][0].as_str().unwrap();
    assert!(
        published.ends_with(&format!(":{port}")),
        "{published} does not publish metrics port {port}"
    );

    let local = spec_yaml(&std::fs::read_to_string(&spec).unwrap());
    let vt = local["source"]["visibility_timeout_secs"]
        .as_u64()
        .unwrap_or(30);
    let grace: u64 = s(e, "stop_grace_period")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        grace >= vt / 2 + 10,
        "stop_grace_period {grace}s must exceed half of visibility_timeout_secs {vt}"
    );
}

#[test]
fn dockerfile_builds_the_engine_from_files_that_exist() {
    let ins = dockerfile();
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    assert!(froms[0].starts_with("rust:1-bookworm "), "{}", froms[0]);
    assert_eq!(froms[1], "debian:bookworm-slim");
    let stage = froms[0].rsplit(' ').next().unwrap();

    let runs: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r)
        .collect();
    let builds = runs
        .iter()
        .filter(|r| r.contains("cargo build --release --locked"))
        .count();
    assert_eq!(
        builds, 2,
        "dependencies are built in their own layer, then the crate"
    );
    assert!(
        runs.iter().any(|r| r.contains("ca-certificates")),
        "TLS roots for AWS and Postgres"
    );

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target/", ".git/", ".local/"] {
        assert!(ignored.contains(&must), ".dockerignore must exclude {must}");
    }
    assert!(
        ignored.iter().any(|p| p.contains("keyring")),
        ".dockerignore must keep keyrings out of the image"
    );
    let bin = format!("/target/release/{}", env!("CARGO_PKG_NAME"));
    for (_, rest) in ins.iter().filter(|(i, _)| i == "COPY") {
        let parts: Vec<&str> = rest.split_whitespace().collect();
        if let Some(from) = parts.iter().find_map(|p| p.strip_prefix("--from=")) {
            assert_eq!(from, stage);
            assert!(parts[1].ends_with(&bin), "copies the engine binary: {rest}");
            continue;
        }
        for src in &parts[..parts.len() - 1] {
            assert!(
                root().join(src).exists(),
                "COPY {src}: no such file in the repository"
            );
            let top = format!("{}/", src.trim_end_matches('/'));
            assert!(
                !ignored.contains(&top.as_str()) && !ignored.contains(src),
                "COPY {src} is excluded by .dockerignore"
            );
        }
    }
    let entry = ins
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, r)| r.as_str());
    assert_eq!(
        entry,
        Some(format!("[\"{}\"]", env!("CARGO_PKG_NAME")).as_str())
    );
    assert_ne!(dockerfile_user(), 0, "the runtime user is not root");
    let k = K8s::load();
    let args = &k.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<String> = args
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let port = port_of(flag(&args, "--metrics-addr").unwrap());
    assert!(
        ins.iter()
            .any(|(i, r)| i == "EXPOSE" && r == &port.to_string()),
        "EXPOSE {port}"
    );
}
