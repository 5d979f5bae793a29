//! `GET /api/openapi.json`: a valid OpenAPI 3.1 document that lists exactly
//! the routes the relay serves, with their credentials and error shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::both_stores;
use crate::helpers::{Backend, TestApp};

both_stores!(answers_match_their_documented_schemas);

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
        // Paths under /api that no route names answer 404 in our shape.
        ("src/http/mod.rs", ", any(route_not_found))"),
        ("src/http/mod.rs", "use axum::routing::any;"),
        // The viewer's static files are the fallback for everything else.
        ("src/http/web.rs", ".fallback"),
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

/// Answers recorded for validation: which operation, and what came back.
struct Recorder<'a> {
    app: &'a TestApp,
    /// Values for the path's `{name}`s, and the credentials by name.
    values: BTreeMap<&'static str, String>,
    answers: Vec<Value>,
}

impl Recorder<'_> {
    fn set(&mut self, name: &'static str, value: &str) {
        self.values.insert(name, value.to_string());
    }

    /// Calls `method template[?query]` with the `{name}`s filled in and the
    /// credential named `auth` (none for ""), with a JSON body unless it is
    /// `null`; records the answer.
    async fn call(&mut self, method: &str, target: &str, auth: &str, body: Value) -> Value {
        let template = target.split('?').next().unwrap_or(target);
        let mut path = target.to_string();
        for (name, value) in &self.values {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        let auth = self.values.get(auth).cloned();
        let body = (!body.is_null()).then_some(body);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, value) = self
            .app
            .call(method.clone(), &path, auth.as_deref(), body)
            .await;
        self.answers.push(serde_json::json!({
            "method": method.as_str().to_lowercase(),
            "template": template,
            "status": status.as_u16(),
            "body": value,
        }));
        value
    }
}

/// Validates each recorded answer against the schema the document gives
/// for its operation and status (or `default`), with the standard
/// OpenAPI 3.1 schema validator.
const VALIDATE_ANSWERS: &str = r##"
import json, sys
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
doc = json.load(open(sys.argv[1]))
answers = json.load(open(sys.argv[2]))
registry = Registry().with_resource("urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012))
failures = []
for a in answers:
    op = doc["paths"][a["template"]][a["method"]]
    responses = op["responses"]
    response = responses.get(str(a["status"]), responses.get("default"))
    where = f'{a["method"]} {a["template"]} {a["status"]}'
    if response is None:
        failures.append(f"{where}: status not documented")
        continue
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        if a["body"] is not None:
            failures.append(f"{where}: a JSON body where none is documented")
        continue
    schema = json.loads(json.dumps(schema).replace('"#/', '"urn:doc#/'))
    for e in OAS31Validator(schema, registry=registry).iter_errors(a["body"]):
        failures.append(f"{where}: {e.message} at {list(e.absolute_path)}")
print(f"{len(answers)} answers checked")
for f in failures:
    print(f)
sys.exit(1 if failures else 0)
"##;

async fn answers_match_their_documented_schemas(backend: Backend) {
    use crate::helpers::ADMIN_TOKEN;
    use serde_json::json;
    let app = TestApp::spawn(backend).await;
    let doc = document(&app).await;
    let mut r = Recorder {
        app: &app,
        values: BTreeMap::from([("admin", format!("Bearer {ADMIN_TOKEN}"))]),
        answers: Vec::new(),
    };
    let none = Value::Null;

    // Astations, sessions, pairing.
    let desk = json!({"name": "desk"});
    let added = r.call("POST", "/api/admin/astations", "admin", desk).await;
    let token = format!("Bearer {}", added["token"].as_str().unwrap());
    r.set("astation", &token);
    r.call("GET", "/api/admin/astations", "admin", none.clone())
        .await;
    r.call("GET", "/api/admin/astations", "", none.clone())
        .await;
    let host = json!({"hostname": "h"});
    let granted = r.call("POST", "/api/sessions", "astation", host).await;
    let s = granted["id"].as_str().unwrap().to_string();
    r.set("session", &format!("session {s}"));
    for grant in [true, false] {
        let host = json!({"hostname": "p"});
        let pending = r.call("POST", "/api/sessions", "", host).await;
        r.set("id", pending["id"].as_str().unwrap());
        r.call("GET", "/api/sessions/{id}/status", "", none.clone())
            .await;
        if grant {
            let otp = json!({"otp": pending["otp"]});
            r.call("POST", "/api/sessions/{id}/grant", "astation", otp)
                .await;
        } else {
            let deny = "/api/sessions/{id}/deny";
            r.call("POST", deny, "astation", none.clone()).await;
        }
    }

    // Vaults: answers and refusals.
    let plan = json!({"summary": "plan"});
    let created = r.call("POST", "/api/vault?id=c", "session", plan).await;
    r.set("vault_id", created["vault_id"].as_str().unwrap());
    let vault = "/api/vault/{vault_id}?id=c";
    for body in [
        json!({"text": "one"}),
        json!({"text": "again", "entry_id": 1}),
        json!({"text": "x", "entry_id": 9}),
    ] {
        r.call("POST", vault, "session", body).await;
    }
    for query in ["", "&history=true&limit=1", "&since=-1"] {
        let read = format!("{vault}{query}");
        r.call("GET", &read, "session", none.clone()).await;
    }
    r.call("GET", vault, "", none.clone()).await;
    r.call("GET", "/api/vault?id=c", "session", none.clone())
        .await;
    let summary = json!({"text": "plan, v2"});
    let set_summary = "/api/vault/{vault_id}/summary?id=c";
    r.call("POST", set_summary, "session", summary).await;
    let info = "/api/vault/{vault_id}/info?id=c";
    r.call("GET", info, "session", none.clone()).await;
    let ticket = "/api/vault/{vault_id}/stream-ticket?id=c";
    r.call("POST", ticket, "session", none.clone()).await;
    let stream = "/api/vault/{vault_id}/stream?id=c";
    r.call("GET", stream, "", none.clone()).await;
    let events = "/api/vault/{vault_id}/events?id=c";
    r.call("GET", events, "", none.clone()).await;

    // Links.
    let links = "/api/vault/{vault_id}/links?id=c";
    let link = r.call("POST", links, "session", json!({})).await;
    r.set("link_id", link["link_id"].as_str().unwrap());
    r.call("GET", links, "session", none.clone()).await;
    let revoke = "/api/vault/{vault_id}/links/{link_id}?id=c";
    r.call("DELETE", revoke, "session", none.clone()).await;

    // Encryption.
    r.call("GET", "/api/encryption", "astation", none.clone())
        .await;
    r.call("GET", "/api/encryption?id=c", "session", none.clone())
        .await;
    for mode in ["off", "sideways"] {
        let change = json!({"mode": mode});
        r.call("POST", "/api/encryption", "astation", change).await;
    }
    let rewrite = json!({"summary": "", "entries": []});
    let rewrite_route = "/api/vault/{vault_id}/encryption?id=c";
    r.call("POST", rewrite_route, "session", rewrite).await;

    // Operations, then the end of the session and of the astation.
    r.call("GET", "/health", "", none.clone()).await;
    r.call("GET", "/metrics", "", none.clone()).await;
    r.set("id", &s);
    r.call("DELETE", "/api/sessions/{id}", "session", none.clone())
        .await;
    r.set("id", added["astation_id"].as_str().unwrap());
    r.call("DELETE", "/api/admin/astations/{id}", "admin", none)
        .await;
    let answers = r.answers;

    let successes = answers
        .iter()
        .filter(|a| a["status"].as_u64().is_some_and(|s| s < 300))
        .count();
    assert!(successes >= 25, "the script mostly succeeds: {answers:?}");
    let dir = std::env::temp_dir();
    let id = uuid::Uuid::new_v4();
    let doc_file = dir.join(format!("vault-relay-doc-{id}.json"));
    let answers_file = dir.join(format!("vault-relay-answers-{id}.json"));
    std::fs::write(&doc_file, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::write(&answers_file, serde_json::to_vec(&answers).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", VALIDATE_ANSWERS])
        .arg(&doc_file)
        .arg(&answers_file)
        .output()
        .expect("python3 with openapi-schema-validator (./scripts/test installs it)");
    let _ = std::fs::remove_file(&doc_file);
    let _ = std::fs::remove_file(&answers_file);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "answers that break the document:\n{report}"
    );
    assert!(
        report.contains(&format!("{} answers checked", answers.len())),
        "{report}"
    );
}
