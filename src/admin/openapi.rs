//! The answers every operation can give besides its own: the layers in front of the
//! handlers (Host check, CSRF rule, admin token and its throttle, body extraction, the
//! database) answer the same way for every route, so they are added to the generated
//! document here, once, rather than repeated on each handler. Statuses a handler already
//! documents keep its description.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Content, OpenApi, PathItem, Ref, RefOr};

/// The schema of a scope (the file's rule: 1-128 visible ASCII characters, no quotes or
/// backslashes); bodies keep scopes as strings and name this type as their schema.
pub struct Scope;

impl utoipa::PartialSchema for Scope {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[!#-\[\]-~]+$"))
            .min_length(Some(1))
            .max_length(Some(128))
            .into()
    }
}

impl utoipa::ToSchema for Scope {}

/// Adds the common error statuses to every operation of `doc`.
pub fn document_common_errors(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let admin = path.starts_with("/admin/");
        for (changes, op) in operations_mut(item) {
            let has_body = op.request_body.is_some();
            let bearer = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut add = |status: u16, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description).into());
            };
            add(
                400,
                "Invalid input: a malformed path parameter, query or body",
            );
            add(
                421,
                "The Host is neither a loopback literal nor one of admin.allowed_hosts",
            );
            if changes {
                add(
                    415,
                    "A change without a bearer token nor `Content-Type: application/json`, or a body that is not JSON",
                );
            }
            if has_body {
                add(413, "The body is larger than 2 MB");
            }
            if admin {
                add(401, "No or a wrong admin token");
                add(403, "A read-only admin token attempting a change");
                add(
                    429,
                    "Too many failed admin-token attempts from this address; see Retry-After",
                );
                add(
                    503,
                    "No database, or the database or the rate limiter cannot be reached",
                );
            } else {
                add(404, "The account API is not enabled");
                add(
                    503,
                    "The database, the rate limiter or the password hasher is unavailable or full; see Retry-After",
                );
                if bearer {
                    add(401, "No valid access token");
                    add(403, "The account is disabled");
                }
            }
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

/// The operations of a path, each with whether its method changes something.
pub(crate) fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, item.get.as_mut()),
        (true, item.put.as_mut()),
        (true, item.post.as_mut()),
        (true, item.delete.as_mut()),
        (true, item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(changes, op)| op.map(|op| (changes, op)))
}
