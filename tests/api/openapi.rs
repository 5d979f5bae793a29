//! `GET /api/openapi.json`: a valid OpenAPI 3.1 document that lists exactly
//! the routes the relay serves, with their credentials and error shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Backend, TestApp};

/// The fallbacks' own words, to tell "no such route" from a handler's 404.
const NO_SUCH_ROUTE: &str = "no such route";
const NO_SUCH_METHOD: &str = "this route does not accept that method";

/// Operations anyone may call without a credential.
const PUBLIC_OPERATIONS: [(&str, &str); 3] = [
    ("/health", "get"),
    ("/api/openapi.json", "get"),
    ("/api/sessions/{id}/status", "get"),
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .expect("document");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.expect("the document is JSON")
}

/// The document's operations: path template -> methods.
fn operations(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()) || *k == "head" || *k == "options")
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_document_is_structurally_valid_openapi_3_1() {
    let app = TestApp::spawn(Backend::Memory).await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        doc["info"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for scheme in ["session", "link", "astation", "admin", "ticket"] {
        assert!(schemes.contains_key(scheme), "scheme {scheme} is declared");
    }

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for r in &refs {
        assert!(resolve(&doc, r).is_some(), "unresolved $ref {r}");
    }

    let mut operation_ids = BTreeSet::new();
    for (path, methods) in operations(&doc) {
        assert!(path.starts_with('/'), "{path}");
        for method in methods {
            let op = &doc["paths"][&path][&method];
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(
                operation_ids.insert(id.to_string()),
                "operationId {id} twice"
            );
            assert!(
                op["summary"].is_string(),
                "{method} {path} says what it does"
            );

            // Every name in the template is a required path parameter, and
            // no path parameter is missing from the template.
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .inspect(|p| assert_eq!(p["required"], true, "{path}: {p}"))
                        .filter_map(|p| p["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, template_params(&path), "{method} {path}");

            // Credentials: declared, and only schemes that exist.
            match op["security"].as_array() {
                Some(reqs) => {
                    for req in reqs {
                        for name in req.as_object().expect("requirement").keys() {
                            assert!(schemes.contains_key(name), "{method} {path}: {name}");
                        }
                    }
                }
                None => assert!(
                    PUBLIC_OPERATIONS.contains(&(path.as_str(), method.as_str())),
                    "{method} {path} declares no credentials; add `security(...)`"
                ),
            }

            // Success and errors are described; errors have the
            // `{"error"}` shape.
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{method} {path} has a success response"
            );
            assert!(
                responses.contains_key("default"),
                "{method} {path}: default"
            );
            for (status, response) in responses {
                assert!(response["description"].is_string(), "{path} {status}");
                let is_error =
                    status == "default" || status.starts_with('4') || status.starts_with('5');
                if !is_error {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"];
                let schema = match schema["$ref"].as_str() {
                    Some(r) => resolve(&doc, r).expect("resolved"),
                    None => schema,
                };
                assert_eq!(
                    schema["properties"]["error"]["type"], "string",
                    "{method} {path} {status}: errors are {{\"error\"}}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_standard_validator_accepts_the_document() {
    let app = TestApp::spawn(Backend::Memory).await;
    let doc = document(&app).await;
    let file =
        std::env::temp_dir().join(format!("vault-relay-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect(
            "python3 runs; the validator comes from PyPI: \
             python3 -m pip install openapi-spec-validator (./scripts/test does it)",
        );
    let _ = std::fs::remove_file(&file);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {report}");
    assert!(report.contains("OK"), "{report}");
}

/// A concrete path for a template (ids that name nothing).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{vault_id}" => "v-0000000000",
            s if s.starts_with('{') => "x-0000000000",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn answer(app: &TestApp, method: &str, path: &str) -> (StatusCode, String) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = app
        .client
        .request(method.clone(), format!("{}{path}", app.base));
    if method == Method::POST || method == Method::PUT || method == Method::PATCH {
        req = req.json(&serde_json::json!({}));
    }
    let resp = req.send().await.expect("the relay answers");
    (resp.status(), resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_and_methods_served() {
    let app = TestApp::spawn(Backend::Memory).await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 18, "{ops:?}");
    for (template, methods) in &ops {
        let path = concrete(template);
        for method in METHODS {
            let (status, body) = answer(&app, method, &path).await;
            if methods.contains(method) {
                // A handler answered: not the fallbacks.
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template}: {body}"
                );
                assert!(
                    !(status == StatusCode::NOT_FOUND && body.contains(NO_SUCH_ROUTE)),
                    "{method} {template} is documented but not routed: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is served but not documented: {body}"
                );
                let error: Value = serde_json::from_str(&body).expect("a JSON 405");
                assert!(
                    error["error"]
                        .as_str()
                        .is_some_and(|e| e.contains(NO_SUCH_METHOD))
                );
            }
        }
    }
}

/// The source files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The converse of the test above: a route added any way but
/// `.routes(routes!(...))` (which puts it in the document) is caught here,
/// by reading the source: axum has no list of its routes to ask.
#[test]
fn routes_are_added_only_together_with_their_description() {
    // Routing calls that bypass the document, and the places allowed to
    // make them (the fallbacks, which are not routes of their own).
    let bypasses = [
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        "fallback(",
        "fallback_service(",
        "axum::routing::",
    ];
    let allowed = [
        (
            "src/http/mod.rs",
            ".route(\"/api/{*rest}\", any(route_not_found))",
        ),
        ("src/http/mod.rs", "use axum::routing::any;"),
        ("src/http/web.rs", ".fallback_service(ServeDir::new(dir)"),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if bypasses.iter().any(|b| code.contains(b))
                && !code.contains("method_not_allowed_fallback(")
                && !allowed.iter().any(|(f, l)| *f == rel && code.contains(l))
            {
                found.push(format!("{rel}:{}: {code}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "routes declared without their OpenAPI description (use #[utoipa::path] and \
         .routes(routes!(...)), see src/http/openapi.rs):\n{}",
        found.join("\n")
    );
}
