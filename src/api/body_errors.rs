//! Names the field a JSON body failed on, for every operation. poem-openapi
//! reports a value of the wrong type ("Expected input type string, found
//! null") without saying where it is, and takes `null` for a field that may be
//! left out; the operation's request schema in the spec says where and what,
//! so the body is walked along it first, and the first value that does not
//! fit is refused with a problem naming that field (`recipients[2].email`).

use std::collections::HashMap;
use std::sync::OnceLock;

use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The spec's schemas, and each operation's request body schema.
struct Schemas {
    components: Map<String, Value>,
    bodies: HashMap<String, Value>,
    /// (method, path segments, `None` for a parameter) → operation id.
    routes: Vec<(String, Vec<Option<String>>, &'static str)>,
}

impl Schemas {
    fn operation(&self, method: &str, path: &str) -> Option<&'static str> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        self.routes
            .iter()
            .find(|(m, pattern, _)| {
                m == method
                    && pattern.len() == segments.len()
                    && pattern
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p.as_deref().map_or(true, |p| p == *s))
            })
            .map(|(_, _, id)| *id)
    }
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let spec: Value = serde_json::from_str(&super::spec_json()).unwrap_or_default();
        let components = spec["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut bodies = HashMap::new();
        let mut routes = Vec::new();
        for (path, methods) in spec["paths"].as_object().into_iter().flatten() {
            for (method, operation) in methods.as_object().into_iter().flatten() {
                let schema = operation["requestBody"]["content"]
                    .as_object()
                    .and_then(|c| c.values().next())
                    .map(|media| media["schema"].clone());
                let (Some(id), Some(schema)) = (operation["operationId"].as_str(), schema) else {
                    continue;
                };
                let id: &'static str = Box::leak(id.to_owned().into_boxed_str());
                let pattern: Vec<Option<String>> = path
                    .split('/')
                    .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                    .collect();
                routes.push((method.to_uppercase(), pattern, id));
                bodies.insert(id.to_owned(), schema);
            }
        }
        // A literal segment wins over a parameter (`/batch` over `/{id}`).
        routes.sort_by_key(|(_, pattern, _)| pattern.iter().filter(|s| s.is_none()).count());
        Schemas {
            components,
            bodies,
            routes,
        }
    })
}

/// Refuses a JSON body that does not fit its operation's schema, naming the
/// field; rewrites a body parse error the same way. The token is checked
/// first: a body found wrong here is swapped for one the operation cannot
/// parse, so the operation still says 401 or 403 before it says 400.
pub async fn name_body_fields<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let body = req.take_body().into_bytes().await?;
    let s = schemas();
    let misfit = (!body.is_empty())
        .then(|| s.operation(req.method().as_str(), req.uri().path()))
        .flatten()
        .and_then(|operation| {
            let value = serde_json::from_slice::<Value>(&body).ok()?;
            first_misfit(&s.components, &s.bodies[operation], &value, "")
        });
    req.set_body(match misfit {
        Some(_) => poem::Body::from_string("!".to_owned()),
        None => body.clone().into(),
    });
    match next.call(req).await {
        Ok(response) => Ok(response.into_response()),
        Err(e) => match misfit {
            Some(misfit) if is_payload_error(&e) => Err(named(&e, misfit)),
            _ => Err(explain(e, &body)),
        },
    }
}

fn is_payload_error(e: &poem::Error) -> bool {
    e.to_string().starts_with("parse request payload error")
}

/// A 400 problem naming the field, carrying the operation of `e` along.
fn named(e: &poem::Error, (field, reason): (String, String)) -> poem::Error {
    let mut named: poem::Error = ApiError::invalid(&field, format!("{field}: {reason}")).into();
    if let Some(operation) = e.data::<OperationId>() {
        named.set_data(*operation);
    }
    named
}

fn explain(e: poem::Error, body: &[u8]) -> poem::Error {
    if !is_payload_error(&e) {
        return e;
    }
    let s = schemas();
    let misfit = e.data::<OperationId>().and_then(|operation| {
        let value = serde_json::from_slice::<Value>(body).ok()?;
        first_misfit(&s.components, s.bodies.get(operation.0)?, &value, "")
    });
    match misfit {
        Some(misfit) => named(&e, misfit),
        None => e,
    }
}

/// The first value in `value` that `schema` does not take: its path and why.
pub(crate) fn first_misfit(
    components: &Map<String, Value>,
    schema: &Value,
    value: &Value,
    path: &str,
) -> Option<(String, String)> {
    let schema = resolve(components, schema);
    let misfit = |reason: String| Some((display(path), reason));
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return misfit(format!(
                "expected one of {}, found {}",
                names.join(", "),
                kind(value)
            ));
        }
        return None;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(object) = value.as_object() else {
                return misfit(format!("expected an object, found {}", kind(value)));
            };
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let properties = schema["properties"].as_object();
            for (name, property) in properties.into_iter().flatten() {
                let at = join(path, name);
                match object.get(name) {
                    None | Some(Value::Null) if required.contains(&name.as_str()) => {
                        let found = if object.contains_key(name) {
                            "null"
                        } else {
                            "missing"
                        };
                        return Some((at, format!("is required, found {found}")));
                    }
                    None => {}
                    Some(Value::Null) if resolve(components, property)["nullable"] != true => {
                        return Some((
                            at,
                            format!("expected {}, found null", expected(components, property)),
                        ));
                    }
                    Some(Value::Null) => {}
                    Some(v) => {
                        if let Some(found) = first_misfit(components, property, v, &at) {
                            return Some(found);
                        }
                    }
                }
            }
            let extra = &schema["additionalProperties"];
            if extra.is_object() {
                for (name, v) in object {
                    if properties.is_some_and(|p| p.contains_key(name)) {
                        continue;
                    }
                    if let Some(found) = first_misfit(components, extra, v, &join(path, name)) {
                        return Some(found);
                    }
                }
            }
            None
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return misfit(format!("expected an array, found {}", kind(value)));
            };
            if let Some(n) = schema["minItems"]
                .as_u64()
                .filter(|n| (items.len() as u64) < *n)
            {
                return misfit(format!(
                    "expected at least {n} items, found {}",
                    items.len()
                ));
            }
            if let Some(n) = schema["maxItems"]
                .as_u64()
                .filter(|n| (items.len() as u64) > *n)
            {
                return misfit(format!("expected at most {n} items, found {}", items.len()));
            }
            items.iter().enumerate().find_map(|(i, item)| {
                first_misfit(components, &schema["items"], item, &format!("{path}[{i}]"))
            })
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                return misfit(format!("expected a string, found {}", kind(value)));
            };
            let chars = text.chars().count() as u64;
            if let Some(n) = schema["minLength"].as_u64().filter(|n| chars < *n) {
                return misfit(format!("expected at least {n} characters, found {chars}"));
            }
            if let Some(n) = schema["maxLength"].as_u64().filter(|n| chars > *n) {
                return misfit(format!("expected at most {n} characters, found {chars}"));
            }
            None
        }
        Some("integer") => {
            let (format_min, format_max) = integer_range(schema["format"].as_str());
            let min = schema["minimum"]
                .as_f64()
                .unwrap_or(format_min)
                .max(format_min);
            let max = schema["maximum"]
                .as_f64()
                .unwrap_or(format_max)
                .min(format_max);
            let range = format!("an integer from {min} to {max}");
            match value.as_f64() {
                Some(n) if value.is_i64() || value.is_u64() => (n < min || n > max)
                    .then(|| (display(path), format!("expected {range}, found {value}"))),
                _ => misfit(format!("expected {range}, found {}", kind(value))),
            }
        }
        Some("number") => {
            let Some(n) = value.as_f64() else {
                return misfit(format!("expected a number, found {}", kind(value)));
            };
            let min = schema["minimum"].as_f64().unwrap_or(f64::MIN);
            let max = schema["maximum"].as_f64().unwrap_or(f64::MAX);
            (n < min || n > max).then(|| {
                (
                    display(path),
                    format!("expected a number from {min} to {max}, found {value}"),
                )
            })
        }
        Some("boolean") if !value.is_boolean() => {
            misfit(format!("expected true or false, found {}", kind(value)))
        }
        _ => None,
    }
}

/// Follows `$ref` and a single-element `allOf` to the schema itself.
fn resolve<'a>(components: &'a Map<String, Value>, schema: &'a Value) -> &'a Value {
    let mut schema = schema;
    for _ in 0..16 {
        if let Some(name) = schema["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            match components.get(name) {
                Some(s) => schema = s,
                None => return schema,
            }
        } else if let Some([only]) = schema["allOf"].as_array().map(Vec::as_slice) {
            schema = only;
        } else {
            break;
        }
    }
    schema
}

/// What a schema takes, in words, for a null where a value belongs.
fn expected(components: &Map<String, Value>, schema: &Value) -> String {
    let schema = resolve(components, schema);
    match schema["type"].as_str() {
        _ if schema["enum"].is_array() => "one of the listed values".into(),
        Some("integer") => {
            let (min, max) = integer_range(schema["format"].as_str());
            let min = schema["minimum"].as_f64().unwrap_or(min).max(min);
            let max = schema["maximum"].as_f64().unwrap_or(max).min(max);
            format!("an integer from {min} to {max}, or no field at all")
        }
        Some("string") => "a string, or no field at all".into(),
        Some("boolean") => "true or false, or no field at all".into(),
        Some("array") => "an array, or no field at all".into(),
        Some("object") => "an object, or no field at all".into(),
        _ => "a value".into(),
    }
}

fn integer_range(format: Option<&str>) -> (f64, f64) {
    match format {
        Some("int8") => (i8::MIN as f64, i8::MAX as f64),
        Some("int16") => (i16::MIN as f64, i16::MAX as f64),
        Some("int32") => (i32::MIN as f64, i32::MAX as f64),
        Some("uint8") => (0.0, u8::MAX as f64),
        Some("uint16") => (0.0, u16::MAX as f64),
        Some("uint32") => (0.0, u32::MAX as f64),
        Some("uint64") => (0.0, u64::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", Value::String(s.chars().take(40).collect())),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn display(path: &str) -> String {
    if path.is_empty() {
        "body".into()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn misfit(operation: &str, body: Value) -> Option<(String, String)> {
        let s = schemas();
        first_misfit(&s.components, &s.bodies[operation], &body, "")
    }

    #[test]
    fn finds_the_operation_of_a_path() {
        let s = schemas();
        assert_eq!(
            s.operation("PUT", "/api/config/smtp/12"),
            Some("smtp_update")
        );
        assert_eq!(s.operation("POST", "/api/config/smtp"), Some("smtp_create"));
        assert_eq!(
            s.operation("POST", "/api/config/recipients/batch"),
            Some("recipient_batch_create")
        );
        assert_eq!(s.operation("GET", "/api/config/smtp"), None, "no body");
    }

    #[test]
    fn names_the_field_of_a_wrong_type_a_null_or_a_value_out_of_range() {
        let (field, reason) = misfit("smtp_create", json!({"port": "abc"})).unwrap();
        assert_eq!(field, "port");
        assert!(reason.contains("found the string \"abc\""), "{reason}");
        let (field, reason) = misfit("smtp_create", json!({"port": 70000})).unwrap();
        assert_eq!(field, "port");
        assert!(reason.contains("from 1 to 65535"), "{reason}");
        let (field, reason) = misfit(
            "recipient_create",
            json!({"table_name": "t", "email": null}),
        )
        .unwrap();
        assert_eq!(
            (field.as_str(), reason.as_str()),
            ("email", "is required, found null")
        );
        let (field, _) = misfit(
            "recipient_batch_create",
            json!({"recipients": [{"table_name": "t", "email": "a@b.c"}, {"table_name": 5, "email": "x"}]}),
        )
        .unwrap();
        assert_eq!(field, "recipients[1].table_name");
        let (field, _) = misfit("smtp_create", json!({"security": "ssl"})).unwrap();
        assert_eq!(field, "security");
        assert_eq!(
            misfit(
                "smtp_create",
                json!({"server": "h", "port": 25, "is_active": true})
            ),
            None
        );
        assert_eq!(
            misfit("smtp_create", json!([1])).map(|m| m.0).as_deref(),
            Some("body")
        );
    }
}
