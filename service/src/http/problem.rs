//! Every failure of the API as an RFC 9457 problem, mapped in this one place, and the problem
//! responses the routes share in the OpenAPI document.

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MAX_BODY_BYTES;
use crate::error::Error;

/// The prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:agent-webhooks:problem:";

/// An RFC 9457 problem: the body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:agent-webhooks:problem:<slug>`, stable.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this request, for a human.
    pub detail: String,
    /// The JSON field or query parameter at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rule that field broke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

// The problem responses the routes share, for the OpenAPI document only (never constructed).

/// 401 on every route.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "Not authenticated",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
pub(super) struct Unauthorized(Problem);

/// 404 on every route under an agent (also another organization's agent).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 404,
    description = "No such agent",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
pub(super) struct AgentNotFound(Problem);

/// 404 on every route under a delivery (also another organization's delivery).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 404,
    description = "No such delivery",
    content_type = "application/problem+json"
)]
#[allow(dead_code)]
pub(super) struct DeliveryNotFound(Problem);

/// The problems of a JSON request body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum JsonBodyProblems {
    #[response(
        status = 400,
        description = "Not JSON",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 413,
        description = "Body too large",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "Not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
    #[response(
        status = 422,
        description = "A field breaks a rule",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
}

/// Why a request failed; [`IntoResponse`] maps each case to its [`Problem`], in this one place.
#[derive(Debug)]
pub enum ApiError {
    /// The service refused or failed.
    Service(Error),
    /// No caller organization.
    Unauthenticated,
    /// No route matches the path.
    RouteNotFound,
    /// The path has routes, none for this method.
    MethodNotAllowed(Method),
    /// A body that is not declared as JSON.
    UnsupportedMediaType,
    /// A body over [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// A body that is not JSON (or could not be read).
    MalformedJson(String),
    /// JSON of the wrong shape.
    InvalidBody {
        /// The field at fault, when one is.
        field: Option<String>,
        /// `unknown-field`, `required` or `type`.
        rule: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// An invalid query or path parameter.
    InvalidParameter {
        /// The parameter, when known.
        field: Option<String>,
        /// The rule it broke.
        rule: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No secret could be generated.
    Rng(crate::secrets::webhook_secret::RngError),
    /// No portal link can be minted ([`PortalLinkError`](super::portal::PortalLinkError)).
    PortalUnavailable,
    /// A test event cannot be sent to this webhook.
    NotSendable {
        /// The missing piece.
        field: &'static str,
        /// Why.
        detail: &'static str,
    },
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::Service(error)
    }
}

impl ApiError {
    /// The problem document of this error; the portal shows its `detail` on its pages.
    pub(super) fn problem(&self) -> Problem {
        let problem = |status: StatusCode, slug: &str, title: &str, detail: String| Problem {
            type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: None,
            rule: None,
        };
        let at = |mut p: Problem, field: Option<&str>, rule: &str| {
            p.field = field.map(str::to_owned);
            p.rule = Some(rule.to_owned());
            p
        };
        match self {
            ApiError::Unauthenticated => problem(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
                "the request does not say which organization it acts for".to_owned(),
            ),
            ApiError::RouteNotFound => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no route of this API matches the path".to_owned(),
            ),
            ApiError::MethodNotAllowed(method) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("this path does not take {method}; the allow header lists what it takes"),
            ),
            ApiError::UnsupportedMediaType => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be JSON, with content-type: application/json".to_owned(),
            ),
            ApiError::BodyTooLarge => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::MalformedJson(detail) => problem(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                detail.clone(),
            ),
            ApiError::InvalidBody {
                field,
                rule,
                detail,
            } => at(
                problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-body",
                    "Invalid body",
                    detail.clone(),
                ),
                field.as_deref(),
                rule,
            ),
            ApiError::InvalidParameter {
                field,
                rule,
                detail,
            } => at(
                problem(
                    StatusCode::BAD_REQUEST,
                    "invalid-parameter",
                    "Invalid parameter",
                    detail.clone(),
                ),
                field.as_deref(),
                rule,
            ),
            ApiError::NotSendable { field, detail } => at(
                problem(
                    StatusCode::CONFLICT,
                    "webhook-not-sendable",
                    "Webhook cannot receive deliveries",
                    (*detail).to_owned(),
                ),
                Some(field),
                "configured",
            ),
            ApiError::PortalUnavailable => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "portal-unavailable",
                "Portal unavailable",
                "this server cannot mint portal links (no WEBHOOK_PORTAL_KEY)".to_owned(),
            ),
            ApiError::Rng(e) => {
                tracing::error!(error = %e, "cannot generate a webhook secret");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "the request failed; the cause is logged".to_owned(),
                )
            }
            ApiError::Service(error) => service_problem(error),
        }
    }
}

fn service_problem(error: &Error) -> Problem {
    let problem = |status: StatusCode, slug: &str, title: &str| Problem {
        type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail: error.to_string(),
        field: None,
        rule: None,
    };
    let at = |mut p: Problem, field: &str, rule: &str| {
        p.field = Some(field.to_owned());
        p.rule = Some(rule.to_owned());
        p
    };
    use crate::secrets::webhook_secret::SecretFormatError;
    use crate::webhook::events::EventFilterError;
    match error {
        Error::AgentNotFound(_) => {
            problem(StatusCode::NOT_FOUND, "agent-not-found", "Agent not found")
        }
        Error::DeliveryNotFound(_) => problem(
            StatusCode::NOT_FOUND,
            "delivery-not-found",
            "Delivery not found",
        ),
        Error::Url(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-webhook-url",
                "Webhook URL not allowed",
            ),
            "webhook_url",
            e.rule(),
        ),
        Error::Events(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-event-filter",
                "Invalid event filter",
            ),
            "webhook_events",
            match e {
                EventFilterError::Unknown { .. } => "known-event",
                EventFilterError::Empty => "not-empty",
                EventFilterError::TooMany { .. } => "max-entries",
            },
        ),
        Error::Filter(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-content-filter",
                "Invalid content filter",
            ),
            "webhook_filter",
            e.reason.rule(),
        ),
        Error::SecretFormat(e) => at(
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-secret",
                "Invalid webhook secret",
            ),
            "webhook_secret",
            match e {
                SecretFormatError::BadBase64 => "whsec-base64",
                SecretFormatError::BadKeyLength { .. } => "whsec-key-length",
                SecretFormatError::TooShort { .. } => "min-length",
                SecretFormatError::TooLong { .. } => "max-length",
                SecretFormatError::NotPrintable => "printable-ascii",
            },
        ),
        Error::InvalidLimit { .. } => at(
            problem(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            "limit",
            "range",
        ),
        Error::BadCursor => at(
            problem(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            "cursor",
            "issued-cursor",
        ),
        Error::NotRequeueable { .. } => problem(
            StatusCode::CONFLICT,
            "not-requeueable",
            "Delivery cannot be retried",
        ),
        Error::SecretChanged(_) => problem(
            StatusCode::CONFLICT,
            "secret-changed",
            "Secret changed meanwhile",
        ),
        Error::NoEncryptionKey => {
            let mut p = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "secrets-unavailable",
                "Secrets unavailable",
            );
            p.detail = "this server cannot store webhook secrets (no encryption key)".to_owned();
            p
        }
        _ => {
            // Never sent: a database error or a sealed secret's trouble is the operator's.
            tracing::error!(error = %error, "webhook API request failed");
            let mut p = problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            );
            p.detail = "the request failed; the cause is logged".to_owned();
            p
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_has_the_prefix_and_its_status() {
        let p = ApiError::from(Error::BadCursor).problem();
        assert_eq!(p.type_, "urn:agent-webhooks:problem:invalid-parameter");
        assert_eq!((p.status, p.field.as_deref()), (400, Some("cursor")));
        let p = ApiError::from(Error::Db(sea_orm::DbErr::Custom("password=x".into()))).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("password"), "{}", p.detail);
    }
}
