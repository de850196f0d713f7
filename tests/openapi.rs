//! `docs/openapi.yaml` and the router agree: every documented operation is routed, every
//! owner route is documented, and no path accepts a method the document does not list.
//! (Whether live answers match the document's schemas is checked by schemathesis in `.ci/run`:
//! see `tests/schemathesis/run.sh`.)

use http::Method;
use wheresmyfox::error::ApiError;
use wheresmyfox::service::web::WebRoute;
use wheresmyfox::service::{Route, route};
use yaml_rust2::{Yaml, YamlLoader};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

const SOME_ID: &str = "0123456789abcdef0123456789abcdef";

fn spec() -> Yaml {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .remove(0)
}

fn operation<'a>(spec: &'a Yaml, path: &str, method: &Method) -> Option<&'a Yaml> {
    let operation = &spec["paths"][path][method.as_str().to_lowercase().as_str()];
    (!operation.is_badvalue()).then_some(operation)
}

/// Where each owner route is documented. A new `Route` does not compile until it is added
/// here, and then `every_owner_route_is_documented` needs it in the document.
fn documented_as(route: &Route) -> Option<(Method, &'static str)> {
    Some(match route {
        Route::CreateAccount => (Method::POST, "/1/accounts"),
        Route::SignIn => (Method::POST, "/1/session"),
        Route::SignOut => (Method::DELETE, "/1/session"),
        Route::Register => (Method::POST, "/1/register"),
        Route::ListDevices => (Method::GET, "/1/devices"),
        Route::GetDevice(_) => (Method::GET, "/1/devices/{id}"),
        Route::RenameDevice(_) => (Method::PATCH, "/1/devices/{id}"),
        Route::ForgetDevice(_) => (Method::DELETE, "/1/devices/{id}"),
        Route::QueueCommand(_) => (Method::POST, "/1/devices/{id}/cmd"),
        Route::Events(_) => (Method::GET, "/1/devices/{id}/events"),
        Route::Heartbeat => (Method::GET, "/__heartbeat__"),
        Route::LbHeartbeat => (Method::GET, "/__lbheartbeat__"),
        Route::Version => (Method::GET, "/__version__"),
        Route::Metrics => (Method::GET, "/metrics"),
        Route::Web(WebRoute::Erase(_)) => (Method::POST, "/1/devices/{id}/erase"),
        // The device side is Hawk-signed and described in docs/protocol.md; the page, its
        // cookie session and the identity provider's redirects are for browsers (docs/web.md,
        // docs/identity.md); data sync has its own reference (docs/sync.md).
        Route::DeviceExchange(_) | Route::Web(_) | Route::Sync(_) => return None,
    })
}

#[test]
fn every_documented_operation_is_routed_and_no_other_method_is() {
    let spec = spec();
    let paths = spec["paths"].as_hash().expect("paths");
    assert!(!paths.is_empty());
    for (path, _) in paths {
        let path = path.as_str().unwrap();
        let concrete = path.replace("{id}", SOME_ID);
        for method in &METHODS {
            let documented = operation(&spec, path, method).is_some();
            match route(method, &concrete) {
                Ok(found) => {
                    assert!(documented, "{method} {path} is routed but not documented");
                    assert_eq!(
                        documented_as(&found),
                        Some((method.clone(), path)),
                        "{method} {path} routes to {found:?}"
                    );
                }
                Err(ApiError::MethodNotAllowed { .. }) => {
                    assert!(!documented, "{method} {path} is documented but refused")
                }
                Err(other) => panic!("{method} {path}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_owner_route_is_documented() {
    let spec = spec();
    let id = || SOME_ID.to_owned();
    let routes = [
        Route::CreateAccount,
        Route::SignIn,
        Route::SignOut,
        Route::Register,
        Route::ListDevices,
        Route::GetDevice(id()),
        Route::RenameDevice(id()),
        Route::ForgetDevice(id()),
        Route::QueueCommand(id()),
        Route::Web(WebRoute::Erase(id())),
        Route::Events(id()),
        Route::Heartbeat,
        Route::LbHeartbeat,
        Route::Version,
        Route::Metrics,
    ];
    for found in &routes {
        let (method, path) = documented_as(found).unwrap();
        assert!(
            operation(&spec, path, &method).is_some(),
            "{found:?} ({method} {path}) is not in docs/openapi.yaml"
        );
        assert_eq!(
            route(&method, &path.replace("{id}", SOME_ID)).as_ref().ok(),
            Some(found)
        );
    }
}

/// What every operation must document, because the server can always answer it.
#[test]
fn operations_document_the_refusals_the_server_always_can_give() {
    let spec = spec();
    for (path, item) in spec["paths"].as_hash().unwrap() {
        for (method, operation) in item.as_hash().unwrap() {
            let method = method.as_str().unwrap();
            if method == "parameters" {
                continue;
            }
            let name = format!("{method} {}", path.as_str().unwrap());
            let responses = operation["responses"].as_hash().expect(&name);
            let has = |status: &str| responses.contains_key(&Yaml::String(status.to_owned()));
            assert!(
                operation["operationId"].as_str().is_some(),
                "{name}: operationId"
            );
            let public = operation["security"]
                .as_vec()
                .is_some_and(|schemes| schemes.is_empty());
            if !public {
                assert!(has("401"), "{name}: a bearer-authenticated call can be 401");
            }
            if !operation["requestBody"].is_badvalue() {
                for status in ["400", "413", "415"] {
                    assert!(has(status), "{name}: a call with a body can be {status}");
                }
            }
            if path.as_str().unwrap().contains("{id}") {
                assert!(has("404"), "{name}: another owner's device is 404");
            }
        }
    }
}
