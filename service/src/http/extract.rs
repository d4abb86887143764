//! The extractors every handler starts from. [`OwnAgent`] and [`OwnDelivery`] authenticate the
//! caller, read the path id, load the row and check its organization in one step, so a handler
//! that takes one is scoped to the caller's tenant before its first line runs, and before the
//! body or the query string is read.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use chrono::Utc;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use super::HttpState;
use super::problem::ApiError;
use crate::delivery::{self, WebhookDelivery};
use crate::error::Error;
use crate::webhook::{self, AgentWebhook};

/// The caller's organization, from the app's [`CallerOrganization`](super::CallerOrganization).
/// Handlers never take it alone: [`OwnAgent`] and [`OwnDelivery`] start with it.
struct Caller {
    organization_id: String,
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        match state.caller.organization_id(parts).await {
            Some(organization_id) => Ok(Caller { organization_id }),
            None => Err(ApiError::Unauthenticated),
        }
    }
}

/// The path of the routes under an agent; also their `params(...)` in the OpenAPI document.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct AgentPath {
    /// The agent
    agent_id: String,
}

/// The path of the routes under a delivery; also their `params(...)` in the OpenAPI document.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DeliveryPath {
    /// The delivery
    delivery_id: String,
}

/// The path parameters; percent-decoding failures are 400 problems like any other parameter.
async fn path<T: DeserializeOwned + Send>(
    parts: &mut Parts,
    state: &HttpState,
) -> Result<T, ApiError> {
    match Path::<T>::from_request_parts(parts, state).await {
        Ok(Path(params)) => Ok(params),
        Err(e) => Err(ApiError::InvalidParameter {
            field: None,
            rule: "path",
            detail: e.body_text(),
        }),
    }
}

/// The live agent of the path, in the caller's organization: 401 without a caller, then 404
/// `agent-not-found` for another organization's agent exactly as for a missing one.
pub(super) struct OwnAgent {
    /// The id as the path spells it, which the service calls and problem details use.
    pub id: String,
    pub agent: AgentWebhook,
}

impl FromRequestParts<HttpState> for OwnAgent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let AgentPath { agent_id } = path(parts, state).await?;
        let agent = webhook::find_agent(&state.db, &agent_id).await?;
        if agent.organization_id != caller.organization_id {
            return Err(Error::AgentNotFound(agent_id).into());
        }
        Ok(OwnAgent {
            id: agent_id,
            agent,
        })
    }
}

/// The delivery of the path, in the caller's organization: 401 without a caller, then 404
/// `delivery-not-found` for another organization's delivery exactly as for a missing one.
pub(super) struct OwnDelivery {
    /// The id as the path spells it.
    pub id: String,
    pub delivery: WebhookDelivery,
}

impl FromRequestParts<HttpState> for OwnDelivery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let DeliveryPath { delivery_id } = path(parts, state).await?;
        let delivery = delivery::get(&state.db, &delivery_id, Utc::now()).await?;
        if delivery.organization_id != caller.organization_id {
            return Err(Error::DeliveryNotFound(delivery_id).into());
        }
        Ok(OwnDelivery {
            id: delivery_id,
            delivery,
        })
    }
}

/// A JSON body: the media type, the size limit (before parsing), then the syntax (400), then
/// the shape with the path of the field at fault (422).
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|essence| {
                let essence = essence.trim().to_ascii_lowercase();
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge
            } else {
                ApiError::MalformedJson(e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A body's value: syntax errors are 400 `malformed-json`, shape errors 422 `invalid-body`
/// naming the field and the rule, and never repeating the value (it may be a misplaced secret).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first, over the whole body, so that a body that is not JSON is always a 400.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not JSON: {e}")))?;
    // serde reads a struct from an array too, its fields in declared order, so
    // `["https://…"]` would pass as a configuration: only an object is a body.
    let not_an_object = match value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    };
    if let Some(kind) = not_an_object {
        return Err(ApiError::InvalidBody {
            field: None,
            rule: "type",
            detail: format!("the body must be a JSON object, not {kind}"),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        };
        let (field, rule) = if let Some(name) = named("unknown field `") {
            (Some(name), "unknown-field")
        } else if let Some(name) = named("missing field `") {
            (Some(name), "required")
        } else {
            ((path != ".").then_some(path), "type")
        };
        // serde's "invalid type: string \"…\", expected …" quotes the value; a value can be
        // a secret sent in the wrong place, so only the expectation is repeated.
        let detail = match message.split_once(", expected ") {
            Some((_, expected)) if rule == "type" => format!(
                "invalid value for `{}`: expected {expected}",
                field.as_deref().unwrap_or("the body")
            ),
            _ => message,
        };
        ApiError::InvalidBody {
            field,
            rule,
            detail,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    fn shape(body: &str) -> (Option<String>, &'static str) {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::InvalidBody { field, rule, .. }) => (field, rule),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field_and_the_rule() {
        assert_eq!(
            shape(r#"{"name":"a","nme":1}"#),
            (Some("nme".to_owned()), "unknown-field")
        );
        assert_eq!(shape(r#"{}"#), (Some("name".to_owned()), "required"));
        assert_eq!(shape(r#"{"name":1}"#), (Some("name".to_owned()), "type"));
        // A struct's fields in an array are not a body; nor is any JSON but an object.
        for not_an_object in [
            r#"["a", null]"#,
            r#"["a"]"#,
            "[]",
            r#""a""#,
            "1",
            "true",
            "null",
        ] {
            assert_eq!(shape(not_an_object), (None, "type"), "{not_an_object}");
        }
        match parse_json::<Body>(br#"{"name":"a","inner":{"n":"whsec_notshown"}}"#) {
            Err(ApiError::InvalidBody { detail, .. }) => {
                assert!(!detail.contains("whsec_notshown"), "{detail}");
                assert!(detail.contains("expected u32"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            shape(r#"{"name":"a","inner":{"n":"x"}}"#),
            (Some("inner.n".to_owned()), "type")
        );
        for bad in ["", "{", "{\"name\":\"a\"} x", "nul"] {
            assert!(
                matches!(
                    parse_json::<Body>(bad.as_bytes()),
                    Err(ApiError::MalformedJson(_))
                ),
                "{bad}"
            );
        }
    }
}
