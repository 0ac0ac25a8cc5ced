//! The routes the gateway serves, in one table: the router serves exactly
//! these, and the OpenAPI document the gateway serves is made from it (a test
//! checks both against each other).

use serde_json::{Value, json};

/// One route: method, path (OpenAPI template), who may call it, what it does.
pub struct Route {
    /// `get`, `post`, `put`, `delete`, `head`.
    pub method: &'static str,
    /// The OpenAPI path template.
    pub path: &'static str,
    /// The policy action it needs (`None`: unauthenticated).
    pub action: Option<&'static str>,
    /// What it does.
    pub summary: &'static str,
}

/// Every route.
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/healthz",
        action: None,
        summary: "Alive",
    },
    Route {
        method: "get",
        path: "/readyz",
        action: None,
        summary: "Ready: configuration, policies and every file system's agent loaded",
    },
    Route {
        method: "get",
        path: "/metrics",
        action: None,
        summary: "Prometheus metrics",
    },
    Route {
        method: "get",
        path: "/v1/openapi.json",
        action: None,
        summary: "This document",
    },
    Route {
        method: "get",
        path: "/v1/fs",
        action: Some("List"),
        summary: "The file systems served",
    },
    Route {
        method: "post",
        path: "/v1/fs/{fs}/jobs",
        action: Some("TierOut"),
        summary: "Start a tier-out run of the file system's source (joins the one running)",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/jobs",
        action: Some("TierOut"),
        summary: "The file system's jobs, newest first",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/jobs/{id}",
        action: Some("TierOut"),
        summary: "A job's state and progress; ?wait=SECONDS waits for its end",
    },
    Route {
        method: "delete",
        path: "/v1/fs/{fs}/jobs/{id}",
        action: Some("TierOut"),
        summary: "Cancel a job at its next safe point",
    },
    Route {
        method: "put",
        path: "/v1/fs/{fs}/push",
        action: Some("Push"),
        summary: "Tier out a tar stream under ?prefix=/PATH, as one snapshot; answers when it is done",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/snapshots",
        action: Some("ReadStore"),
        summary: "The snapshots a registered writer signed",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/ls",
        action: Some("List"),
        summary: "Entries of a snapshot (?snapshot=, ?path=), those the caller may list",
    },
    Route {
        method: "post",
        path: "/v1/fs/{fs}/recall",
        action: Some("Recall"),
        summary: "Recall a released file (?path=/P; joins its recall in flight; ?wait=SECONDS waits for the end): its content back in place, verified",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/recall/{id}",
        action: Some("Recall"),
        summary: "A recall's state and result; ?wait=SECONDS waits for its end",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/store",
        action: Some("ReadStore"),
        summary: "List store objects (?prefix=): keys and sizes",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/store/{key}",
        action: Some("ReadStore"),
        summary: "A store object, read-only, with Range",
    },
    Route {
        method: "head",
        path: "/v1/fs/{fs}/store/{key}",
        action: Some("ReadStore"),
        summary: "A store object's size",
    },
    Route {
        method: "post",
        path: "/v1/fs/{fs}/ranges/{key}",
        action: Some("ReadStore"),
        summary: "Many ranges of a store object in one request (a body of {\"ranges\": [[start, end], ...]}, at most 4096 ranges and 16 MiB): their bytes one after another",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/nodes",
        action: Some("Unlock"),
        summary: "How many delegation nodes the relay reaches (as /nodes/0 ... /nodes/N-1)",
    },
    Route {
        method: "get",
        path: "/v1/fs/{fs}/nodes/{node}/v1/node",
        action: Some("Unlock"),
        summary: "Relay: a delegation node's description",
    },
    Route {
        method: "post",
        path: "/v1/fs/{fs}/nodes/{node}/v1/reencrypt",
        action: Some("Unlock"),
        summary: "Relay: a user's signed re-encryption request to a node, and its answer",
    },
    Route {
        method: "post",
        path: "/v1/admin/reload",
        action: Some("Admin"),
        summary: "Reload the configuration and the policies (as SIGHUP does)",
    },
];

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        let mut params = Vec::new();
        for name in ["fs", "id", "key", "node"] {
            if r.path.contains(&format!("{{{name}}}")) {
                params.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        let mut op = json!({
            "summary": r.summary,
            "parameters": params,
            "responses": {
                "200": { "description": "OK" },
                "400": { "description": "Bad request (the body names the problem)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "401": { "description": "Not authenticated" },
                "403": { "description": "Refused by policy" },
                "404": { "description": "No such file system, job or object" },
                "503": { "description": "The store or the nodes are unavailable; Retry-After says when to try again" }
            },
        });
        if let Some(action) = r.action {
            op["security"] = json!([{ "cbfsSignature": [] }, { "clientCertificate": [] }]);
            op["x-cbfs-action"] = json!(action);
        }
        entry
            .as_object_mut()
            .expect("an object")
            .insert(r.method.to_owned(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "cbfs-gateway", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "cbfsSignature": { "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "cbfs-sig user=, ts=, nonce=, sig=: the caller's cbfs signing key over the method, path and query, timestamp, nonce and X-Cbfs-Content-Sha256" },
                "clientCertificate": { "type": "mutualTLS" }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error", "reason"],
                    "properties": { "error": { "type": "string" }, "reason": { "type": "string" } } }
            }
        }
    })
}
