//! The answers every operation can give besides its own: the layers in front of the
//! handlers (Host check, CSRF rule, admin token and its throttle, body extraction, the
//! database) answer the same way for every route, so they are added to the generated
//! document here, once, rather than repeated on each handler. Statuses a handler already
//! documents keep its description.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Content, OpenApi, PathItem, Ref, RefOr};
use utoipa::PartialSchema;

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

/// Text PostgreSQL's `jsonb` can store: anything but U+0000, which it refuses.
const NO_NUL: &str = "^[^\\u0000]*$";

/// The schema of consumer metadata: a JSON object whose keys and string values, at any
/// depth, contain no U+0000 (the `jsonb` column cannot store it; the server refuses it
/// with a 400 naming the field).
pub struct Metadata;

/// Any JSON value of [`Metadata`] (recursive).
pub struct MetadataValue;

fn text_without_nul() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL))
}

fn metadata_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(text_without_nul()))
        .additional_properties(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(
            "MetadataValue",
        ))))
}

impl utoipa::PartialSchema for Metadata {
    fn schema() -> RefOr<Schema> {
        metadata_object().into()
    }
}

impl utoipa::ToSchema for Metadata {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("MetadataValue".into(), MetadataValue::schema()));
    }
}

impl utoipa::PartialSchema for MetadataValue {
    fn schema() -> RefOr<Schema> {
        let value = || RefOr::<Schema>::Ref(Ref::from_schema_name("MetadataValue"));
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(text_without_nul())
            .item(ArrayBuilder::new().items(value()))
            .item(metadata_object())
            .into()
    }
}

impl utoipa::ToSchema for MetadataValue {}

/// States in `doc` the rule of a plan's windows that their fields alone do not say (the
/// shared rules of `config::limits::check_plan`): no two windows alike. A plan without
/// windows nor a cap is an unlimited plan. (Two windows of one length but different
/// counts, and a token bucket's refill period, are rules JSON Schema cannot state: the
/// server refuses them with a 400 naming the field.)
pub fn document_plan_rules(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let distinct_windows = || {
        ObjectBuilder::new().property(
            "limits",
            // Typed array-or-null: this only adds uniqueness (a change's `limits: null`
            // stays valid).
            ArrayBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
                .items(RefOr::<Schema>::Ref(Ref::from_schema_name("LimitBody")))
                .unique_items(true),
        )
    };
    for name in ["PlanCreate", "PlanPatch"] {
        if let Some(schema) = components.schemas.remove(name) {
            components.schemas.insert(
                name.into(),
                AllOfBuilder::new()
                    .item(schema)
                    .item(distinct_windows())
                    .into(),
            );
        }
    }
}

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
